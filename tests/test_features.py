"""The frozen-tower feature cache: hits on the second pass, keyed by pixels, bad images flagged."""

from __future__ import annotations

import numpy as np

from pinclip.config import VisionConfig
from pinclip.models.features import image_features
from pinclip.models.vision import TinyCNN


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
