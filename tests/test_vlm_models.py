"""VLM backbones on tiny random-init models of every supported family (code paths, not quality).

For each family: the processor survives save -> load, the three modes give finite normalized
embeddings, PinCLIP's own sequence assembly equals the Hugging Face model's forward, a batch equals
its rows one by one, a LoRA step lowers the loss on a fixed batch, and a checkpoint of adapters
loads and merges back to the same embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from synthetic import COLORS, draw

from pinclip.config import load_config
from pinclip.models.build import build_model
from pinclip.models.vlm.tiny import TINY_FAMILIES

FAMILIES = list(TINY_FAMILIES)
TEXTS = [["red circle", "", "a circle in red", "red circles", "red, circle"],
         ["", "a lonely description", "", "", ""],
         ["blue square", "", "", "", "blue"],
         ["green cross", "green", "", "", ""]]


def images():
    return [draw(COLORS["red"], "circle", 40), None, draw(COLORS["blue"], "square", 56),
            draw(COLORS["green"], "cross", 48)]


def vlm_model(folder, *overrides: str):
    cfg = load_config(preset="tiny", overrides=[f"model.vlm.path={folder}", *overrides])
    torch.manual_seed(0)
    return build_model(cfg.model), cfg


@pytest.mark.parametrize("family", FAMILIES)
def test_processor_round_trip(family, tiny_vlm, tmp_path):
    from pinclip.models.vlm.base import load_processor

    model, _ = vlm_model(tiny_vlm(family))
    prompt = model.prompt("pin", "title: red circle", True)
    first = model._process([prompt], [images()[0]])
    model.backbone.processor.save_pretrained(tmp_path)
    again = load_processor(tmp_path)(text=[prompt], images=model.backbone.family.images_argument([images()[0]]),
                                     return_tensors="pt", padding=True)
    assert set(first) == set(again)
    for key in first:
        assert torch.equal(torch.as_tensor(first[key]), torch.as_tensor(again[key])), key
    # the processor's placeholders and the vision encoder's output agree in number
    feats = model.image_features(first, [0], [None])[0]
    assert int((first["input_ids"] == model.backbone.image_token_id).sum()) == feats.embeds.shape[0]
    h, w = feats.grid_hw
    assert feats.grid().shape == (model.backbone.width, h, w)


@pytest.mark.parametrize("family", FAMILIES)
def test_three_modes_give_normalized_embeddings(family, tiny_vlm):
    model, cfg = vlm_model(tiny_vlm(family))
    with torch.no_grad():
        out = model({"images": images(), "texts": TEXTS})
    dim = cfg.model.dims[0]
    assert out["image"].shape == out["pin"].shape == (4, dim)
    assert out["text"].shape == (4, 5, dim)
    assert out["text_mask"].tolist() == [[bool(t) for t in row] for row in TEXTS]
    for emb in (out["image"], out["pin"], out["text"][out["text_mask"]]):
        assert torch.isfinite(emb).all()
        assert torch.allclose(emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-5)
        for d in cfg.model.dims[1:]:  # every Matryoshka prefix is a usable embedding once re-normalized
            assert torch.isfinite(F.normalize(emb[:, :d], dim=-1)).all()
    assert not torch.allclose(out["image"][0], out["image"][2])  # the image reaches the embedding


@pytest.mark.parametrize("family", FAMILIES)
def test_assembly_matches_the_models_own_forward(family, tiny_vlm):
    """No granularity tokens, no head: PinCLIP's sequence is exactly what the model itself computes."""
    model, _ = vlm_model(tiny_vlm(family), "model.vlm.regions=-1", "model.vlm.head=none", "model.dims=[32,16]")
    img = images()[2]
    with torch.no_grad():
        ours = model({"images": [img], "texts": [TEXTS[2]]}, modes=("pin",))["pin"]
        processed = model._process([model.prompt("pin", "title: blue square\nannotations: blue", True)], [img])
        theirs = model.backbone.hf.model(**processed).last_hidden_state[:, -1]  # (1, W)
    assert torch.allclose(ours, F.normalize(theirs, dim=-1), atol=1e-6)


@pytest.mark.parametrize("family,pooling", [(f, "last") for f in FAMILIES] + [("qwen2_5_vl", "mean"),
                                                                             ("idefics3", "mean")])
def test_a_batch_equals_its_rows(family, pooling, tiny_vlm):
    """Left padding, rows without an image and positions never change a row's embedding."""
    model, _ = vlm_model(tiny_vlm(family), f"model.vlm.pooling={pooling}")
    imgs = images()
    with torch.no_grad():
        batch = model({"images": imgs, "texts": TEXTS})
        for i in range(len(imgs)):
            one = model({"images": [imgs[i]], "texts": [TEXTS[i]]})
            for key in ("image", "pin"):
                assert torch.allclose(one[key][0], batch[key][i], atol=1e-5), (key, i)
            assert torch.allclose(one["text"][0], batch["text"][i], atol=1e-5)


def fixed_batch_loss(model, cfg):
    from pinclip.train.gpu_check import plain_batch_context
    from pinclip.train.objective import objective

    out = model({"images": images(), "texts": TEXTS})
    return objective(model, out, plain_batch_context(2, torch.device("cpu")), cfg.loss, cfg.model.dims)["loss"]


@pytest.mark.parametrize("family", FAMILIES)
def test_one_lora_step_lowers_the_loss(family, tiny_vlm):
    model, cfg = vlm_model(tiny_vlm(family))
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    frozen = [p for n, p in model.named_parameters() if n.startswith("backbone.") and "lora_" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)  # the base model never trains
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = fixed_batch_loss(model, cfg)
    before.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)
    optimizer.step()
    with torch.no_grad():
        after = fixed_batch_loss(model, cfg)
    assert after < before


@pytest.mark.parametrize("family", FAMILIES)
def test_adapters_save_load_and_merge_to_the_same_embeddings(family, tiny_vlm, tmp_path):
    from pinclip.export import export_checkpoint
    from pinclip.train.checkpoint import load_model, save_checkpoint

    model, cfg = vlm_model(tiny_vlm(family))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking adapters (B starts at zero) and head
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    batch = {"images": images(), "texts": TEXTS}
    with torch.no_grad():
        reference = model(batch)
    save_checkpoint(tmp_path / "ckpt", model, cfg, step=1, meta={"quant": None})
    names = set(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    assert any("lora_A" in n for n in names) and not any(n.endswith("embed_tokens.weight") for n in names)
    loaded, _, _ = load_model(tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "export")
    merged, merged_cfg, _ = load_model(tmp_path / "export")
    assert merged_cfg.model.vlm.finetune == "frozen"
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        for again in (loaded(batch), merged(batch)):
            for key in ("image", "pin", "text"):
                assert np.allclose(again[key].numpy(), reference[key].numpy(), atol=1e-5), key
