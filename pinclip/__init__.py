"""PinCLIP: foundational multimodal pin embeddings (image + texts + board graph) for retrieval and ranking."""

__version__ = "0.1.0"
