"""The `vlm_embedder` baseline: a pretrained VLM embedding model scored zero-shot, as the paper
compares PinCLIP with Qwen3-VL-Embedding.

    pinclip eval --checkpoint runs/vlm/train/final --vlm-embedder /models/Qwen3-VL-Embedding-2B --data-dir D
    create_vlm_embedder("/models/Qwen3-VL-Embedding-2B", "runs/vlm/baselines/vlm_embedder")

Any supported VLM folder works (pinclip.models.vlm): nothing is trained; each image, text and pin
is a prompt in the model's chat template (plain text without one), the embedding is the last
token's final hidden state, L2-normalized, and its leading dimensions are the Matryoshka prefixes
(the Qwen3-VL-Embedding models are trained for that). No global/regional tokens are added: the
model sees only its own image tokens. The folder written is a PinCLIP checkpoint (a frozen model,
no head), so the same harness, regimes, intervals and int8 tables score it, and it can be served.
"""

from __future__ import annotations

from pathlib import Path

from pinclip.config import load_config

MATRYOSHKA = (1024, 512, 256, 128, 64)


def create_vlm_embedder(vlm_folder: str | Path, folder: str | Path, pooling: str = "last",
                        cache_dir: str | None = None) -> Path:
    """Write the zero-shot baseline's checkpoint folder for the VLM in vlm_folder; returns it."""
    from transformers import AutoConfig

    from pinclip.models.build import build_model
    from pinclip.train.checkpoint import save_checkpoint

    width = AutoConfig.from_pretrained(str(vlm_folder)).get_text_config().hidden_size
    dims = [width, *(d for d in MATRYOSHKA if d < width)]
    overrides = [f"model.vlm.path={Path(vlm_folder).resolve()}", "model.vlm.finetune=frozen", "model.vlm.head=none",
                 "model.vlm.regions=-1", f"model.vlm.pooling={pooling}", f"model.dims={dims}"]
    if cache_dir:
        overrides.append(f"train.cache_dir={cache_dir}")
    cfg = load_config(preset="demo", overrides=overrides)
    model = build_model(cfg.model)
    meta = {"kind": "vlm_embedder", "baseline": "vlm_embedder", "quant": None, "pooling": pooling,
            "zero_shot": True}
    save_checkpoint(folder, model, cfg, step=0, meta=meta)
    return Path(folder)
