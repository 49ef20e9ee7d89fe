"""Baselines: the recipes users would otherwise pick, trained or run on the same data (DESIGN.md §5).

    pinclip eval --run runs/demo --baselines --scaling      # trains what is missing, then evaluates
    paths = train_baselines(cfg, "runs/demo", ["frozen", "two_tower", "fused_no_neighbor"])

Each baseline is a checkpoint folder under <run>/baselines/<name>/ that `pinclip eval --checkpoint`
loads like PinCLIP's own:
- frozen: pretrained features without alignment. Text = MiniLM mean-pooled over tokens (the
  sentence-transformers recipe; all layers frozen), image = EfficientNet-Lite0's pooled grid. A pin
  is the normalized concatenation [image; text] of the two unit halves, its text half being the
  mean of its fields' unit embeddings; search scores the query's text embedding against the pins'
  text halves. Image and text live in unrelated spaces, so PinText is not scored (null, with a note).
- two_tower: the open_clip / LiT recipe on the same towers: one text field (title), image-text loss
  only. It has no fused mode: its pin representation is the image embedding and its queries use
  the title field tag, the only one it was trained with (meta {"pin_mode": "image",
  "query_field": "title"}).
- fused_no_neighbor: the full model without the neighbor loss (the VLM-embedding recipe).
- pinclip: the full model, trained by `pinclip train` into <run>/train/.
A baseline whose final checkpoint exists is not trained again (delete its folder to retrain).

`scaling_curve` trains PinCLIP on a share of the training pins (`train.train_fraction`) and reports
PinText Recall@10 (mean of image->text and text->image, warm and cold) per share.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.cli import UserError
from pinclip.config import Config, config_from_dict, config_to_dict, save_config
from pinclip.data.schema import TEXT_FIELDS

BASELINES: tuple[str, ...] = ("frozen", "two_tower", "fused_no_neighbor")
ONE_FIELD = {f: (1.0 if f == "title" else 0.0) for f in TEXT_FIELDS}
TRAINED_BASELINES: dict[str, dict[str, Any]] = {
    "two_tower": {"loss": {"pin_text_weight": 0.0, "neighbor_weight": 0.0, "field_weights": ONE_FIELD}},
    "fused_no_neighbor": {"loss": {"neighbor_weight": 0.0}},
}
BASELINE_META: dict[str, dict[str, Any]] = {
    "two_tower": {"baseline": "two_tower", "pin_mode": "image", "query_field": "title"},
    "fused_no_neighbor": {"baseline": "fused_no_neighbor"},
}
FROZEN_MAX_TOKENS = 128  # per text field; sentence-transformers' MiniLM reads up to 256
PINTEXT_TASKS = ("pintext_i2t", "pintext_t2i")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_pooled_fields(states: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean over tokens of every (pin, field) of ragged TextStates: (P, F, W) float32 and mask (P, F)."""
    present = states.length > 0  # (P, F)
    starts = states.start[present]  # (N,) segments are packed back to back in `tokens`
    order = np.argsort(starts)
    sums = np.add.reduceat(states.tokens, starts[order], axis=0, dtype=np.float32) if len(starts) else None
    out = np.zeros((*states.length.shape, states.tokens.shape[1]), np.float32)  # (P, F, W)
    if sums is not None:
        means = np.empty_like(sums)
        means[order] = sums / states.length[present][order][:, None]  # back to the mask's order
        out[present] = means
    return out, present


class FrozenEncoder:
    """Frozen pretrained towers, no alignment (the `frozen` baseline; see the module docstring)."""

    kind = "frozen"
    cross_modal = False
    dims: list[int] = []
    quant = None
    notes = {task: "frozen image and text towers share no embedding space: image<->text retrieval "
                   "cannot be scored without alignment" for task in PINTEXT_TASKS}

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        import yaml

        from pinclip.models.backbone import Backbone
        from pinclip.models.vision import build_vision_tower

        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.cfg = config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
        self.version = str(self.meta["version"])
        self.device = device
        self.vision = build_vision_tower(self.cfg.model.vision).to(device).eval()
        self.backbone = Backbone(self.cfg.model.backbone).to(device).eval()

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> np.ndarray:
        """Pooled image features and mean-pooled field embeddings of every pin; has_image (P,)."""
        from pinclip.models.features import image_features
        from pinclip.models.text_states import compute_text_states, field_strings

        vis, has_image = image_features(self.vision, self.cfg.model.vision, pins.images, cache_dir, progress=progress)
        if vis.shape[1] == 0:  # a catalog without a single readable image
            vis = np.zeros((len(pins), 1, self.vision.out_channels), np.float16)
        self.image = _unit(vis[:, 0].astype(np.float32)) * has_image[:, None]  # (P, C) global token
        states = compute_text_states(self.backbone, field_strings(pins.texts, len(pins)), cache_dir=cache_dir,
                                     progress=progress)
        fields, present = mean_pooled_fields(states)  # (P, F, W), (P, F)
        self.text = _unit(_unit(fields).sum(1))  # (P, W) mean direction of the present fields
        self.pin = np.concatenate([self.image, self.text], axis=1) / np.sqrt(2.0)  # (P, C + W)
        self.pin = _unit(self.pin)
        return has_image

    def pintext(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError("frozen features are not aligned across modalities")

    def pin_vectors(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"related": self.pin[rows], "search": self.text[rows]}

    def query_vectors(self, texts: list[str]) -> np.ndarray:
        from pinclip.models.text_states import compute_text_states

        rows = [[t or " "] + [""] * (len(TEXT_FIELDS) - 1) for t in texts]
        fields, _ = mean_pooled_fields(compute_text_states(self.backbone, rows, progress=False))
        return _unit(fields[:, 0])  # (Q, W)


def frozen_config(base_cfg: Config) -> Config:
    """The towers of base_cfg, every backbone layer frozen, sentence-length text fields."""
    cfg = copy.deepcopy(base_cfg)
    cfg.model.backbone.train_layers = 0
    cfg.model.backbone.max_field_tokens = FROZEN_MAX_TOKENS
    cfg.model.vision.unfreeze_last = 0
    return cfg


def create_frozen(base_cfg: Config, folder: str | Path) -> Path:
    """Write the frozen baseline's folder (config.yaml + meta.json) atomically; returns it."""
    folder = Path(folder)
    cfg = frozen_config(base_cfg)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_config(cfg, tmp / "config.yaml")
    digest = hashlib.sha256(json.dumps(config_to_dict(cfg)["model"], sort_keys=True).encode()).hexdigest()[:12]
    meta = {"kind": "frozen", "baseline": "frozen", "version": f"frozen-{digest}", "dims": [],
            "text_pooling": "mean", "pin": "concat(unit image, unit text) / sqrt(2)"}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def with_overrides(base_cfg: Config, updates: dict[str, Any]) -> Config:
    """A copy of base_cfg with a nested dict of values applied (names checked by the config loader)."""
    merged = config_to_dict(base_cfg)

    def apply(node: dict[str, Any], upd: dict[str, Any]) -> None:
        for key, value in upd.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict) and key != "field_weights":
                apply(node[key], value)
            else:
                node[key] = copy.deepcopy(value)

    apply(merged, updates)
    return config_from_dict(merged)


def _train_once(cfg: Config, progress: bool) -> Path:
    """The final checkpoint of cfg's run, trained (or resumed) only if it is not there yet."""
    from pinclip.train.trainer import train

    final = Path(cfg.train.out_dir) / "final"
    if (final / "meta.json").is_file():
        return final
    return Path(train(cfg, progress=progress))


def train_baselines(base_cfg: Config, run_dir: str | Path, names: Sequence[str] = BASELINES,
                    steps: int | None = None, progress: bool = True) -> dict[str, Path]:
    """{name: checkpoint folder} of each baseline under <run_dir>/baselines/, training what is missing."""
    from pinclip.train.checkpoint import update_meta

    run_dir = Path(run_dir)
    unknown = sorted(set(names) - {*BASELINES, "pinclip"})
    if unknown:
        raise UserError(f"unknown baselines {unknown}; known: {', '.join((*BASELINES, 'pinclip'))}")
    out: dict[str, Path] = {}
    for name in names:
        folder = run_dir / "baselines" / name
        if name == "pinclip":
            out[name] = main_checkpoint(run_dir)
        elif name == "frozen":
            out[name] = folder if (folder / "meta.json").is_file() else create_frozen(base_cfg, folder)
        else:
            cfg = with_overrides(base_cfg, TRAINED_BASELINES[name])
            cfg.train.out_dir = str(folder)
            cfg.train.steps = steps or cfg.train.steps
            out[name] = _train_once(cfg, progress)
            update_meta(out[name], **BASELINE_META[name])
    return out


def main_checkpoint(run_dir: str | Path) -> Path:
    """<run_dir>/train/final, the PinCLIP model of a run."""
    final = Path(run_dir) / "train" / "final"
    if not (final / "meta.json").is_file():
        raise UserError(f"{final}: no trained PinCLIP model; train it first "
                        f"(pinclip train --config configs/demo.yaml train.out_dir={Path(run_dir) / 'train'})")
    return final


def pintext_recall10(evaluation: dict[str, Any]) -> float | None:
    """Mean PinText Recall@10 over both directions and the splits present."""
    values = [m["recall@10"] for t in PINTEXT_TASKS for m in (evaluation.get(t) or {}).values()
              if m is not None and np.isfinite(m["recall@10"])]
    return float(np.mean(values)) if values else None


def scaling_curve(base_cfg: Config, run_dir: str | Path, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                  steps: int | None = None, dataset: Any = None, cache_dir: str | Path | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """PinText Recall@10 of PinCLIP trained on each share of the training pins (Figure 5).

    Every point sees the same number of epochs: a share f of the pins trains for f of the main
    run's steps (at least 30; `steps` overrides). The 1.0 point reuses <run_dir>/train/final when
    it exists; the others train under <run_dir>/scaling/frac-<share>/ (resumable, skipped when done).
    """
    from pinclip.eval.harness import evaluate_checkpoint
    from pinclip.train.dataset import load_dataset_dir

    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise UserError(f"training fractions must be in (0, 1], got {bad}")
    dataset = dataset or load_dataset_dir(base_cfg.train.data_dir)
    cache_dir = cache_dir or base_cfg.train.cache_dir
    points = []
    for fraction in sorted(fractions):
        main = Path(run_dir) / "train" / "final"
        if fraction == 1.0 and (main / "meta.json").is_file():
            checkpoint = main
        else:
            cfg = with_overrides(base_cfg, {"train": {"train_fraction": float(fraction)}})
            cfg.train.out_dir = str(Path(run_dir) / "scaling" / f"frac-{fraction:.2f}")
            cfg.train.steps = steps or max(30, round(cfg.train.steps * fraction))
            cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, cfg.train.steps // 5))
            checkpoint = _train_once(cfg, progress)
        ev = evaluate_checkpoint(checkpoint, dataset, cache_dir=cache_dir, tasks=PINTEXT_TASKS, quantization=False,
                                 dims=None, progress=progress)
        meta = json.loads((checkpoint / "meta.json").read_text())
        points.append({
            "fraction": float(fraction), "train_pins": meta.get("train_pins"), "checkpoint": str(checkpoint),
            "version": meta.get("version"), "pintext_recall@10": pintext_recall10(ev),
            **{t: {s: (m or {}).get("recall@10") for s, m in (ev.get(t) or {}).items()} for t in PINTEXT_TASKS},
        })
    return {"metric": "PinText Recall@10, mean of image->text and text->image over warm and cold",
            "points": points}
