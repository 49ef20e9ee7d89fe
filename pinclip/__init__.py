"""PinCLIP: foundational multimodal pin embeddings (image + texts + board graph) for retrieval and ranking.

    from pinclip import Embedder
    model = Embedder.from_checkpoint("runs/mine/train/final")
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Embedder"]


def __getattr__(name: str):
    """`Embedder` imported on first use, so `pinclip --help` does not load torch."""
    if name == "Embedder":
        from pinclip.models.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'pinclip' has no attribute {name!r}")
