"""The tower mix in the evaluation harness: PinCLIP and its untrained towers, mixed in output space.

    pinclip eval --run runs/demo --tower-mix 0.25,0.5,0.75 --partition val   # choose the weight on validation
    folder = create_mixed("runs/demo/train/final", 0.5, "runs/demo/mixed")   # pinclip.models.tower_mix

What is mixed and why: pinclip.models.tower_mix. Here the two halves come from the harness's own
encoders over cached features: ModelEncoder (PinCLIP) and FrozenEncoder (the `frozen` baseline of the
checkpoint's config, in the folder's towers/), so the mixed model is judged on exactly the vectors
the two models it mixes are judged on. `calibrate_mixed` fits the served int8 parameters on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.eval.encoders import ModelEncoder, TaskVectors, unit
from pinclip.eval.tasks import TaskSpec
from pinclip.models.tower_mix import (
    TowerReduction,
    image_half,
    read_reduction,
    reduce_image,
    reduce_text,
    text_half,
    tower_mix,
)

_SHARED: dict[tuple, Any] = {}


def _shared(key: tuple, make: Any) -> Any:
    """One encoder per key in this process, so the mixes of one checkpoint at several weights embed the catalog
    once (PinCLIP's and the towers' catalog vectors do not depend on the weight); the last 4 are kept."""
    if key not in _SHARED:
        while len(_SHARED) >= 4:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = make()
    return _SHARED[key]


class EnsembleEncoder:
    """A PinCLIP checkpoint and the frozen towers, mixed (module docstring)."""

    kind = "tower_mix"
    dims: list[int] = []  # the concatenation has no Matryoshka prefixes

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        from pinclip.baselines.frozen import FrozenEncoder
        from pinclip.quant import GlobalAffine

        meta = json.loads((Path(folder) / "meta.json").read_text())
        self.weight = float(meta["weight"])
        self.model = _shared(("model", str(meta["checkpoint"]), device), lambda: ModelEncoder(meta["checkpoint"], device))
        towers = Path(folder) / "towers"
        self.towers = _shared(("towers", (towers / "meta.json").read_text(), device), lambda: FrozenEncoder(towers, device))
        self.version = str(meta["version"])
        self.quant = GlobalAffine.from_dict(meta["quant"]) if meta.get("quant") else None  # else fitted by the harness
        self.reduction = read_reduction(folder, meta)  # None: the towers' half at full size
        self.notes: dict[str, str] = {}

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> None:
        for part in (self.model, self.towers):  # shared by the mixes of one checkpoint: prepared once per catalog
            if getattr(part, "prepared_for", None) is not pins:
                part.prepare(pins, cache_dir, progress)
                part.prepared_for = pins

    def _widths(self) -> tuple[int, int]:
        if self.reduction is not None:
            return self.reduction.dims
        return self.towers.image.shape[1], self.towers.fields_text.shape[2]

    def _image(self, pins: np.ndarray) -> np.ndarray:
        return image_half(reduce_image(self.towers.image[pins], self.reduction), self._widths()[1])

    def _text(self, text: np.ndarray) -> np.ndarray:
        return text_half(reduce_text(unit(text), self.reduction), self._widths()[0])

    def _pins(self, regime: str) -> np.ndarray:
        image = reduce_image(self.towers.image, self.reduction)
        return unit(np.concatenate([image, reduce_text(self.towers.text_half(regime), self.reduction)], axis=1))

    def tower_vectors(self, spec: TaskSpec) -> TaskVectors:
        """The towers' half of every query and corpus row, in [image | text] coordinates."""
        fields = self.towers.fields_text  # (P, F, W)
        if spec.task == "pintext_i2t":
            return TaskVectors(self._image(spec.query_pins), self._text(fields[spec.corpus_pins, spec.corpus_fields]))
        if spec.task == "pintext_t2i":
            return TaskVectors(self._text(fields[spec.query_pins, spec.query_fields]), self._image(spec.corpus_pins))
        pins = self._pins(spec.regime)  # (P, C + W)
        if spec.task == "related":
            queries = pins[spec.query_pins]
        else:
            queries = self._text(self.towers.query_vectors(list(spec.query_texts)))
        return TaskVectors(queries, pins[spec.corpus_pins])

    def vectors(self, spec: TaskSpec) -> TaskVectors:
        ours, towers = self.model.vectors(spec), self.tower_vectors(spec)
        return TaskVectors(tower_mix(ours.queries, towers.queries, self.weight),
                           tower_mix(ours.corpus, towers.corpus, self.weight))


def fit_towers_reduction(checkpoint: str | Path, dataset: Any, dims: tuple[int, int], cache_dir: str | Path | None = None,
                         sample: int = 20000, seed: int = 0, progress: bool = False, center: bool = False
                         ) -> TowerReduction:
    """The towers' half of a checkpoint's config reduced to dims = (IMAGE, TEXT) singular directions
    (TowerReduction.fit), fitted on the tower vectors of the dataset's training pins only (their images, and every
    present text field), at most `sample` rows of each."""
    import tempfile

    import yaml

    from pinclip.baselines.frozen import FrozenEncoder, create_frozen
    from pinclip.config import config_from_dict
    from pinclip.eval.encoders import resolve_checkpoint
    from pinclip.train.dataset import training_subset

    cfg = config_from_dict(yaml.safe_load((resolve_checkpoint(checkpoint) / "config.yaml").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        towers = FrozenEncoder(create_frozen(cfg, Path(tmp) / "towers"))
    towers.prepare(dataset.pins, cache_dir, progress)
    rows = training_subset(dataset.pins, dataset.splits)
    image = towers.image[rows][towers.has_image[rows]]
    fields = unit(towers.fields_text[rows]).reshape(-1, towers.fields_text.shape[2])
    text = fields[np.linalg.norm(fields, axis=1) > 0]
    rng = np.random.default_rng(seed)
    image, text = (x[np.sort(rng.choice(len(x), size=min(len(x), sample), replace=False))] for x in (image, text))
    return TowerReduction.fit(image, text, dims, center)


_REDUCTIONS: dict[tuple, tuple[Any, TowerReduction]] = {}


def reduction_for(checkpoint: str | Path, dims: tuple[int, int] | None, cache_dir: str | Path | None = None,
                  progress: bool = False, dataset: Any = None) -> TowerReduction | None:
    """The towers' half reduction for a trained checkpoint, fitted on the training pins of `dataset` (default: the
    data its config trained on); one fit per (towers, data, dims) in this process. None when `dims` is None."""
    if not dims:
        return None
    import yaml

    from pinclip.config import config_from_dict
    from pinclip.eval.encoders import resolve_checkpoint
    from pinclip.eval.mix_cli import run_dataset

    cfg = config_from_dict(yaml.safe_load((resolve_checkpoint(checkpoint) / "config.yaml").read_text()))
    data = ("dataset", id(dataset)) if dataset is not None else (cfg.train.data_dir, cfg.train.pins, cfg.train.splits)
    key = (repr(cfg.model.vision), repr(cfg.model.backbone.name), data, tuple(dims))
    if key not in _REDUCTIONS:  # the dataset is kept with its fit, so its id is not reused while the entry lives
        dataset = dataset if dataset is not None else run_dataset(cfg)
        _REDUCTIONS[key] = (dataset, fit_towers_reduction(checkpoint, dataset, dims, cache_dir or cfg.train.cache_dir,
                                                          progress=progress))
    return _REDUCTIONS[key][1]


def calibrate_mixed(folder: str | Path, dataset: Any, cache_dir: str | Path | None = None, sample: int = 2000,
                    seed: int = 0, progress: bool = False) -> dict:
    """Fit the global int8 parameters of a tower-mix folder on a sample of its image, text and pin vectors
    over the dataset's catalog (as training does for PinCLIP), write them into its meta.json; returns them."""
    from pinclip.quant import fit_global_affine, quant_to_json

    enc = EnsembleEncoder(folder)
    enc.prepare(dataset.pins, cache_dir, progress)
    rng = np.random.default_rng(seed)
    pins = np.sort(rng.choice(len(dataset.pins), size=min(sample, len(dataset.pins)), replace=False))
    ours_text, mask = enc.model._catalog("text"), enc.model._catalog("text_mask")
    p, f = np.nonzero(mask[pins])
    image = pins[enc.towers.has_image[pins]]
    parts = [tower_mix(enc.model._catalog("image")[image], enc._image(image), enc.weight),
             tower_mix(ours_text[pins[p], f], enc._text(enc.towers.fields_text[pins[p], f]), enc.weight),
             tower_mix(enc.model._catalog("pin")[pins], enc._pins("full")[pins], enc.weight)]
    mix = np.concatenate([x[np.sort(rng.choice(len(x), size=min(len(x), sample), replace=False))] for x in parts])
    meta_path = Path(folder) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["quant"] = quant_to_json(fit_global_affine(mix, method="percentile", percentile=99.99), meta["version"])
    tmp = meta_path.with_name(".meta.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(meta_path)
    return meta["quant"]
