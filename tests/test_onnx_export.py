"""`pinclip export --format onnx`: ONNX Runtime's image, text and pin embeddings equal the checkpoint's
(Embedder) on the tiny preset, for batches and lengths other than the traced ones."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from pinclip.cli import main
from pinclip.models.embedder import Embedder
from pinclip.onnx_export import onnx_feeds


@pytest.fixture(scope="module", params=["fused", "hybrid"])
def checkpoint(request, tiny_checkpoint, catalog, tmp_path_factory):
    """The tiny checkpoint (pure early fusion) and a tiny hybrid one (late fusion + the gated fused pass)."""
    if request.param == "fused":
        return tiny_checkpoint
    from pinclip.config import load_config
    from pinclip.train.trainer import train

    out = tmp_path_factory.mktemp("tiny-hybrid")
    return train(load_config(preset="tiny", overrides=[
        f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={out}", f"train.cache_dir={out / 'cache'}",
        "train.steps=3", "model.pin_mode=hybrid", "model.pool_balance=true"]), progress=False)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--format", "onnx"]) == 0
    return out


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _images(catalog, n: int) -> list[Image.Image]:
    return [Image.open(p) for p in sorted((catalog["pins"].parent / "images").glob("*.png"))[:n]]


def test_the_folder_holds_three_encoders_and_what_to_feed_them(exported, checkpoint):
    info = json.loads((exported / "onnx.json").read_text())
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert info["version"] == meta["version"] and info["dims"] == meta["dims"] and info["quant"] == meta["quant"]
    assert {p.name for p in exported.iterdir()} == {"image.onnx", "text.onnx", "pin.onnx", "tokenizer", "onnx.json"}


def test_text_embeddings_equal_the_checkpoints(exported, checkpoint):
    emb = Embedder.from_checkpoint(checkpoint)
    texts = ["red circle", "a very long description of a blue square drawn on white paper", "x"]
    for field in ("title", "queries"):
        want = emb.embed_texts(texts, field=field)
        got = _session(exported / "text.onnx").run(None, onnx_feeds(emb.model, texts=texts, field=field))[0]
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_image_embeddings_equal_the_checkpoints(exported, checkpoint, catalog):
    emb = Embedder.from_checkpoint(checkpoint)
    images = _images(catalog, 5)
    got = _session(exported / "image.onnx").run(None, onnx_feeds(emb.model, images=images))[0]
    np.testing.assert_allclose(got, emb.embed_images(images), atol=1e-4)


def test_pin_embeddings_equal_the_checkpoints(exported, checkpoint, catalog):
    emb = Embedder.from_checkpoint(checkpoint)
    img = _images(catalog, 3)
    pins = [{"image": img[0], "title": "red circle", "annotations": ["red", "circle"]},
            {"image": None, "title": "blue square", "description": "a square drawn in blue"},
            {"image": img[1]},
            {"image": img[2], "title": "green", "queries": ["green triangles", "triangle"], "caption": "tri"}]
    got = _session(exported / "pin.onnx").run(None, onnx_feeds(emb.model, pins=pins))[0]
    np.testing.assert_allclose(got, emb.embed_pins(pins), atol=1e-4)


def test_a_missing_checkpoint_is_a_user_error(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--format", "onnx"]) == 2
    assert "pinclip export: error:" in capsys.readouterr().err
