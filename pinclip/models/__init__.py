"""Vision towers, the VLM backbone, the PinCLIP model and the inference-time Embedder."""
