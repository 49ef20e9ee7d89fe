"""Fast inference paths (pinclip.models.fast) against the reference Embedder, on the tiny preset."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pinclip.config import load_config
from pinclip.models.embedder import Embedder
from pinclip.models.fast import FastImageEncoder, FastTextEncoder, length_buckets
from pinclip.models.pinclip import PinCLIP

TEXTS = ["red apple", "", "a small grey cat sleeping on a warm windowsill in the sun", "dog",
         "keycap: #", "the quick brown fox jumps over the lazy dog again and again and again"]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    cfg = load_config(preset="tiny")
    model = PinCLIP(cfg.model).eval()
    return Embedder(model, {"version": "tiny-test", "dims": list(cfg.model.dims)})


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 36, 3), dtype=np.uint8)) for i in range(5)]


def test_length_buckets_sorts_then_cuts():
    buckets = length_buckets([5, 1, 3, 1, 9], batch_size=2)
    # lengths sorted: 1 (pos 1), 1 (pos 3), 3 (pos 2), 5 (pos 0), 9 (pos 4)
    assert [b.tolist() for b in buckets] == [[1, 3], [2, 0], [4]]


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_fast_text_matches_reference(embedder, backend):
    for field in ("title", "queries"):
        ref = embedder.embed_texts(TEXTS, field=field)
        fast = FastTextEncoder(embedder.model, backend=backend, batch_size=4).embed(TEXTS, field=field)
        assert fast.shape == ref.shape == (len(TEXTS), 32)
        # the reference stores the frozen states as float16; the fast path keeps float32
        assert np.abs(fast - ref).max() < 2e-3
        assert np.allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)


def test_openvino_text_paths_match_reference(embedder):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    ref = embedder.embed_texts(TEXTS, field="queries")
    exact = FastTextEncoder(embedder.model, backend="openvino", precision="fp32", batch_size=2)
    assert exact.runner.requests >= 1
    fast = exact.embed(TEXTS, field="queries")  # 3 batches in flight, written back in text order
    assert np.abs(fast - ref).max() < 2e-3
    calibration = [f"{c} {s}" for c in ("red", "blue", "tiny green") for s in ("cat", "house on a hill", "star")]
    for precision in ("bf16", "int8"):
        encoder = FastTextEncoder(embedder.model, backend="openvino", precision=precision, calibration_texts=calibration)
        cosine = (encoder.embed(TEXTS, field="queries") * ref).sum(1)
        assert cosine.min() > 0.99, precision  # measured: int8 0.9946, bf16 0.99999
    with pytest.raises(ValueError, match="calibration"):
        FastTextEncoder(embedder.model, backend="openvino", precision="int8")


def test_openvino_runner_keeps_batch_order_with_more_batches_than_requests(embedder):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    encoder = FastTextEncoder(embedder.model, backend="openvino", precision="fp32", batch_size=1)
    one_by_one = encoder.embed(TEXTS, field="queries")
    encoder.runner.requests = 2  # 6 batches through 2 requests: each request reused, waited for and read in turn
    assert np.abs(encoder.embed(TEXTS, field="queries") - one_by_one).max() < 1e-6
    encoder.runner.requests = 1
    assert np.abs(encoder.embed(TEXTS, field="queries") - one_by_one).max() < 1e-6
    assert len(set(np.round(one_by_one[:, 0], 6))) == len(TEXTS)  # distinct rows: a swap would show


def test_fast_text_int8_and_bf16_stay_close(embedder):
    ref = embedder.embed_texts(TEXTS)
    for precision, floor in (("int8", 0.999), ("bf16", 0.99)):  # measured: int8 0.999998, bf16 0.9972
        fast = FastTextEncoder(embedder.model, backend="torch", precision=precision).embed(TEXTS)
        cosine = (fast * ref).sum(1)
        assert cosine.min() > floor, precision


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_fast_image_matches_reference(embedder, backend):
    ref = embedder.embed_images(images())
    fast = FastImageEncoder(embedder.model, backend=backend, batch_size=2).embed(images())
    assert fast.shape == ref.shape == (5, 32)
    assert np.abs(fast - ref).max() < 1e-4


def test_embedder_optimize_swaps_paths(embedder):
    ref_text, ref_image = embedder.embed_texts(TEXTS), embedder.embed_images(images())
    fast = Embedder(embedder.model, embedder.meta).optimize(backend="torch")
    assert np.abs(fast.embed_texts(TEXTS) - ref_text).max() < 2e-3
    assert np.abs(fast.embed_images(images()) - ref_image).max() < 1e-4


def test_bad_options_are_refused(embedder):
    with pytest.raises(ValueError, match="unknown backend"):
        FastTextEncoder(embedder.model, backend="tvm")
    with pytest.raises(ValueError, match="fp32 only"):
        FastTextEncoder(embedder.model, backend="onnx", precision="int8")
    with pytest.raises(ValueError, match="runs the text path"):
        FastImageEncoder(embedder.model, backend="openvino")
    with pytest.raises(ValueError, match="unknown field"):
        FastTextEncoder(embedder.model, backend="torch").embed(["a"], field="color")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_fast_text_of_a_lora_backbone_matches_reference(backend):
    """A LoRA-finetuned backbone (adapters unmerged) takes the same fast paths as a fully finetuned one."""
    import torch

    cfg = load_config(preset="tiny", overrides=["model.backbone.finetune=lora", "model.backbone.lora_rank=4"])
    torch.manual_seed(0)
    model = PinCLIP(cfg.model).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # trained adapters, not the B = 0 of the start
    embedder = Embedder(model, {"version": "tiny-lora", "dims": list(cfg.model.dims)})
    ref = embedder.embed_texts(TEXTS, field="title")
    fast = FastTextEncoder(model, backend=backend, batch_size=4).embed(TEXTS, field="title")
    assert np.abs(fast - ref).max() < 2e-3
