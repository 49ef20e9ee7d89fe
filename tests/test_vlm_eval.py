"""`pinclip eval` on VLM models: a VLM checkpoint and the zero-shot `vlm_embedder` baseline (a
pretrained VLM, last-token pooled) go through the same harness, regimes and intervals as PinCLIP."""

from __future__ import annotations

import json

import torch

from pinclip.config import load_config
from pinclip.models.build import build_model


def test_a_vlm_checkpoint_and_the_zero_shot_vlm_embedder_are_scored(catalog, tiny_vlm, tmp_path):
    from pinclip.cli import main
    from pinclip.train.checkpoint import load_model, save_checkpoint

    cfg = load_config(preset="tiny", overrides=[f"model.vlm.path={tiny_vlm('qwen2_vl')}"])
    save_checkpoint(tmp_path / "vlm", build_model(cfg.model), cfg, step=0, meta={"quant": None})
    embedder_folder = tiny_vlm("qwen3_vl")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(tmp_path / "vlm"), "--vlm-embedder", str(embedder_folder),
                 "--data-dir", str(catalog["pins"].parent), "--out", str(out), "--quiet", "--max-queries", "20",
                 "--no-ann", "--no-trec"]) == 0
    models = json.loads((out / "metrics.json").read_text())["models"]
    assert set(models) == {"vlm", "vlm_embedder"}
    for name in models:
        for task in ("pintext_i2t", "pintext_t2i", "related", "search"):
            cells = [cell for split in models[name][task].values() for cell in split.values() if cell]
            assert cells and all(0.0 <= c["recall@10"] <= 1.0 and len(c["recall@10_ci"]) == 2 for c in cells)
        assert set(models[name]["related"]["warm"]) == {"full", "title", "image"}  # every text regime
    assert "vlm_embedder" in (out / "report.md").read_text()

    # the baseline is the VLM itself: frozen, no head, no added tokens, last-token pooled
    model, cfg, meta = load_model(out / "vlm_embedder")
    assert meta["kind"] == "vlm_embedder" and meta["quant"] is None
    assert cfg.model.vlm.finetune == "frozen" and cfg.model.vlm.head == "none" and cfg.model.vlm.regions == -1
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert cfg.model.dims[0] == model.backbone.width
    with torch.no_grad():
        pooled = model({"images": [None], "texts": [["a red circle", "", "", "", ""]]}, modes=("text",))["text"][0, 0]
    assert torch.isclose(pooled.norm(), torch.tensor(1.0))
