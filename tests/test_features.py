"""The frozen-tower feature cache: hits on the second pass, keyed by pixels, bad images flagged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pinclip.config import VisionConfig
from pinclip.models import fast
from pinclip.models.features import TowerRunner, image_features, tower_runner
from pinclip.models.vision import TinyCNN


def frozen_tiny() -> TinyCNN:
    tower = TinyCNN().eval()
    tower.requires_grad_(False)
    return tower


def test_cache_hits_and_bad_images(tmp_path, catalog):
    tower, cfg = TinyCNN().eval(), VisionConfig(name="tiny-cnn", image_size=32)
    images = sorted((catalog["pins"].parent / "images").glob("*.png"))[:5]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    sources = [str(p) for p in images] + [str(bad), None, images[0].read_bytes()]
    first, ok = image_features(tower, cfg, sources, tmp_path / "cache", progress=False)
    assert first.shape == (8, 5, 16) and ok.tolist() == [True] * 5 + [False, False, True]
    assert np.array_equal(first[0], first[7])  # same pixels from a path or bytes: same features
    shards = list((tmp_path / "cache").rglob("shard-*.npz"))
    assert len(shards) == 1
    second, ok2 = image_features(tower, cfg, sources, tmp_path / "cache", progress=False)
    assert np.array_equal(first, second) and np.array_equal(ok, ok2)
    assert len(list((tmp_path / "cache").rglob("shard-*.npz"))) == 1  # nothing recomputed


def test_onnx_runner_matches_eager_tower():
    tower = frozen_tiny()
    pixels = torch.randn(3, 3, 32, 32)
    onnx, eager = TowerRunner(tower, 32, backend="onnx"), TowerRunner(tower, 32, backend="torch")
    assert (onnx.backend, eager.backend) == ("onnx", "torch")
    assert torch.allclose(onnx(pixels), eager(pixels), atol=1e-5)
    assert TowerRunner(tower, 32).backend == "onnx"  # auto: a frozen tower on the CPU


def test_auto_runner_is_reused_only_for_frozen_towers():
    cfg = VisionConfig(name="tiny-cnn", image_size=32)
    frozen = frozen_tiny()
    assert tower_runner(frozen, cfg) is tower_runner(frozen, cfg)
    trainable = TinyCNN()
    assert tower_runner(trainable, cfg).backend == "torch"  # its weights change: no export


def test_failed_export_falls_back_to_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(fast, "onnx_session", broken)
    with pytest.warns(UserWarning, match="ONNX export of vision tower tiny-cnn failed"):
        runner = TowerRunner(frozen_tiny(), 32, backend="onnx")
    assert runner.backend == "torch" and runner(torch.zeros(1, 3, 32, 32)).shape[0] == 1
