"""Shared fixtures: the synthetic catalog (once per session), a tiny trained checkpoint and a small demo corpus."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from synthetic import make_catalog  # noqa: E402


@pytest.fixture(scope="session")
def catalog(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("catalog")
    return make_catalog(root)


@pytest.fixture(scope="session")
def tiny_checkpoint(catalog, tmp_path_factory) -> Path:
    """A tiny-preset model trained for a few steps on the synthetic catalog (code paths, not quality)."""
    from pinclip.config import load_config
    from pinclip.train.trainer import train

    out = tmp_path_factory.mktemp("tiny-train")
    cfg = load_config(preset="tiny", overrides=[
        f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={out}", f"train.cache_dir={out / 'cache'}",
        "train.steps=4"])
    return train(cfg, progress=False)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """A ~120-pin demo corpus built from the installed demo data (tests using it skip when it is missing)."""
    from pinclip.data.demo import build_demo_corpus

    out = tmp_path_factory.mktemp("demo")
    build_demo_corpus(str(out), seed=0, max_clipart=50, max_emoji=25)
    return out


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """family -> a folder holding a tiny random-init VLM of that family and its processor (built once)."""
    from pinclip.models.vlm.tiny import write_tiny_vlm

    built: dict[str, Path] = {}

    def folder(family: str) -> Path:
        if family not in built:
            built[family] = write_tiny_vlm(family, tmp_path_factory.mktemp(f"vlm-{family}"))
        return built[family]

    return folder


@pytest.fixture(scope="session")
def tiny_run(catalog, tmp_path_factory) -> Path:
    """A run folder (train/final, cache) of a tiny-preset model trained a few steps on the synthetic catalog."""
    from pinclip.config import load_config
    from pinclip.train.trainer import train

    run = tmp_path_factory.mktemp("run")
    train(load_config(preset="tiny", overrides=[f"train.data_dir={catalog['pins'].parent}",
                                                 f"train.out_dir={run / 'train'}", f"train.cache_dir={run / 'cache'}",
                                                 "train.steps=4"]), progress=False)
    return run
