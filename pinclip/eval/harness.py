"""The evaluation harness: one model (a checkpoint folder) on the retrieval tasks of a dataset.

    pinclip eval --checkpoint runs/demo/train/final --data-dir runs/demo/data
    results = evaluate_checkpoint("runs/demo/train/final", load_dataset_dir("runs/demo/data"),
                                  cache_dir="runs/cache")

Tasks come from `pinclip.eval.tasks.build_eval_tasks` (pintext_i2t, pintext_t2i, related, search
on the warm and cold splits). What is embedded for each (DESIGN.md §5):
    pintext_i2t  image-mode query        vs  text-mode (pin, field) items
    pintext_t2i  text-mode title query   vs  image-mode corpus
    related      pin representation      vs  pin representations (the query itself excluded)
    search       query text, field tag "queries"  vs  pin representations
The pin representation is the fused embedding, or the image embedding for a model whose meta says
{"pin_mode": "image"} (a two-tower model has no fused mode). Frozen-feature baselines
(meta {"kind": "frozen"}) come from `pinclip.eval.baselines`.

Result, for one model:
    {task: {split: {"recall@1", "recall@10", "recall@50", "recall@100", "hit@10", ..., "queries",
                    "corpus"} or None when the model cannot score the task},
     "dims": {dim: {task: {split: {...}}}},          every Matryoshka prefix, re-normalized
     "quantization": {task: {split: {"fp32", "int8_global", "int8_per_dim", "ann"}}},  Recall@10
     "notes": {task: why it is None}, "meta": {...}}
int8_global: the checkpoint's global affine params applied to queries and corpus (dequantized,
exact search). int8_per_dim: per-dimension ranges fitted on a mix of the eval corpus's image, text
and pin embeddings. ann: the server's FAISS index (pinclip.serve.index.PinIndex; IVF, the kind the
server builds at scale, from `ann_min` corpus items, else flat) over the int8 corpus, searched with
fp32 queries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from pinclip.cli import UserError
from pinclip.data.schema import TEXT_FIELDS
from pinclip.eval.metrics import recall_at_k, retrieval_metrics
from pinclip.eval.tasks import SPLITS, TASKS, TaskSpec, build_eval_tasks
from pinclip.quant import (
    GlobalAffine,
    dequantize,
    dequantize_per_dim,
    fit_global_affine,
    fit_per_dim_affine,
    quantize,
    quantize_per_dim,
)
from pinclip.train.dataset import Dataset

KS: tuple[int, ...] = (1, 10, 50, 100)
CALIBRATION_PINS = 2000  # pins per embedding kind in the per-dimension calibration mix


class PinEncoder(Protocol):
    """What the harness needs of a model; `ModelEncoder` and the frozen baseline implement it."""

    kind: str
    version: str
    dims: list[int]  # Matryoshka dims, largest first; [] = one dim per task, no prefixes
    quant: GlobalAffine | None  # None: fitted on the eval corpus
    cross_modal: bool  # False: image<->text tasks cannot be scored
    notes: dict[str, str]

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> np.ndarray: ...
    def pintext(self, rows: np.ndarray) -> dict[str, np.ndarray]: ...
    def pin_vectors(self, rows: np.ndarray) -> dict[str, np.ndarray]: ...
    def query_vectors(self, texts: list[str]) -> np.ndarray: ...


class ModelEncoder:
    """A trained PinCLIP checkpoint over precomputed image features and text states."""

    kind = "pinclip"
    cross_modal = True

    def __init__(self, checkpoint: str | Path, device: str = "cpu") -> None:
        from pinclip.train.checkpoint import load_model

        self.model, self.cfg, self.meta = load_model(checkpoint, device)
        self.device = device
        self.version = str(self.meta["version"])
        self.dims = [int(d) for d in self.meta["dims"]]
        self.quant = GlobalAffine.from_dict(self.meta["quant"]) if self.meta.get("quant") else None
        self.pin_mode = self.meta.get("pin_mode", "pin")  # "pin" (fused) | "image" (two-tower)
        self.query_field = self.meta.get("query_field", "queries")
        self.notes: dict[str, str] = {}

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> np.ndarray:
        """Image features and text states of every pin; returns has_image (P,)."""
        from pinclip.models.features import image_features
        from pinclip.models.text_states import compute_text_states, field_strings

        self.vis, self.has_image = image_features(self.model.vision, self.model.cfg.vision, pins.images,
                                                  cache_dir, progress=progress)
        if self.vis.shape[1] == 0:  # a catalog without a single readable image
            self.vis = np.zeros((len(pins), self.model.num_visual, self.model.vision.out_channels), np.float16)
        self.progress = progress
        texts = field_strings(pins.texts, len(pins))
        self.states = compute_text_states(self.model.backbone, texts, cache_dir=cache_dir, progress=progress)
        return self.has_image

    def _embed(self, rows: np.ndarray, modes: tuple[str, ...], chunk: int = 1024) -> dict[str, np.ndarray]:
        from pinclip.models.embedder import embed_rows

        parts: dict[str, list[np.ndarray]] = {}
        for lo in tqdm(range(0, len(rows), chunk), desc=f"embed {'+'.join(modes)}", unit="chunk",
                       disable=not getattr(self, "progress", False)):
            out = embed_rows(self.model, self.vis, self.has_image, self.states, rows[lo : lo + chunk], modes,
                             device=self.device)
            for k, v in out.items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def pintext(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """{"image": (N, D), "text": (N, F, D), "text_mask": (N, F)} of pins `rows`."""
        return self._embed(rows, ("image", "text"))

    def pin_vectors(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """{"related": (N, D), "search": (N, D)}: the fused embedding, or the image one (two-tower).

        A two-tower pin without an image is represented by its first present text field.
        """
        if self.pin_mode != "image":
            pin = self._embed(rows, ("pin",))["pin"]
            return {"related": pin, "search": pin}
        out = self._embed(rows, ("image", "text"))
        vectors = out["image"].copy()
        no_image = ~self.has_image[rows] & out["text_mask"].any(1)  # (N,)
        first = out["text_mask"].argmax(1)  # (N,) first present field
        vectors[no_image] = out["text"][np.flatnonzero(no_image), first[no_image]]
        return {"related": vectors, "search": vectors}

    def query_vectors(self, texts: list[str]) -> np.ndarray:
        """Text-mode embeddings (Q, D) of query strings with this model's query field tag."""
        from pinclip.models.embedder import Embedder

        return Embedder(self.model, self.meta, self.device).embed_texts(texts, field=self.query_field)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training folder holding one as final/."""
    path = Path(path)
    if not (path / "meta.json").is_file() and (path / "final" / "meta.json").is_file():
        return path / "final"
    if not (path / "meta.json").is_file():
        raise UserError(f"{path}: not a PinCLIP checkpoint (no meta.json, no final/meta.json)")
    return path


def load_encoder(checkpoint: str | Path, device: str = "cpu") -> PinEncoder:
    """The encoder of a checkpoint folder: a trained model, or a frozen-feature baseline."""
    import json

    path = resolve_checkpoint(checkpoint)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path / 'meta.json'}: unreadable: {err}") from None
    if meta.get("kind") == "frozen":
        from pinclip.eval.baselines import FrozenEncoder

        return FrozenEncoder(path, device)
    return ModelEncoder(path, device)


def all_test_splits(dataset: Dataset) -> dict[str, Any]:
    """Splits that make the whole dataset test data: every pin cold, every board held out."""
    return {"seed": 0, "cold_start_pins": list(dataset.pins.pin_ids), "val_pins": [],
            "heldout_boards": list(dataset.edges.board_ids)}


def build_tasks(dataset: Dataset, splits: dict[str, Any], has_image: np.ndarray, max_queries: int,
                max_pins: int = 2000, seed: int = 0) -> dict[str, dict[str, TaskSpec]]:
    """`build_eval_tasks` over a loaded dataset."""
    pins, edges = dataset.pins, dataset.edges
    try:
        return build_eval_tasks(
            pins.pin_ids, pins.texts, [pins.pin_ids[i] for i in edges.pin_index],
            [edges.board_ids[b] for b in edges.board_index], dict(zip(edges.board_ids, edges.board_titles)),
            splits, has_image=has_image, max_queries=max_queries, max_pins=max_pins, seed=seed)
    except ValueError as err:
        raise UserError(f"cannot build evaluation tasks: {err}") from None


@dataclass
class TaskVectors:
    """One task on one split, embedded: queries (Q, D) against corpus (N, D)."""

    queries: np.ndarray
    corpus: np.ndarray
    relevant: list[np.ndarray]
    exclude: np.ndarray | None


def _positions(rows: np.ndarray, num_pins: int) -> np.ndarray:
    where = np.full(num_pins, -1, np.int64)
    where[rows] = np.arange(len(rows))
    return where


def _pins_of(specs: dict[str, dict[str, TaskSpec]], tasks: tuple[str, ...], with_queries: bool) -> np.ndarray:
    """Sorted pin indices in the corpora (and queries) of the given tasks."""
    parts = [np.zeros(0, np.int64)]
    for task in tasks:
        for spec in specs.get(task, {}).values():
            parts += [spec.corpus_pins, spec.query_pins] if with_queries else [spec.corpus_pins]
    return np.unique(np.concatenate(parts))


def embed_tasks(encoder: PinEncoder, specs: dict[str, dict[str, TaskSpec]], num_pins: int
                ) -> tuple[dict[str, dict[str, TaskVectors]], dict[str, np.ndarray]]:
    """Every task's query and corpus vectors (each pin embedded once) and the embedded arrays."""
    pintext_rows = _pins_of(specs, ("pintext_i2t", "pintext_t2i"), with_queries=True)
    pin_rows = _pins_of(specs, ("related", "search"), with_queries=False)  # related queries are corpus pins
    arrays: dict[str, np.ndarray] = {}
    if len(pintext_rows) and encoder.cross_modal:
        arrays.update(encoder.pintext(pintext_rows))
    if len(pin_rows):
        arrays.update(encoder.pin_vectors(pin_rows))
    at_t, at_p = _positions(pintext_rows, num_pins), _positions(pin_rows, num_pins)
    out: dict[str, dict[str, TaskVectors]] = {}
    for task, by_split in specs.items():
        for split, spec in by_split.items():
            if task.startswith("pintext") and not encoder.cross_modal:
                continue
            if task == "pintext_i2t":
                field_of = {f: i for i, f in enumerate(TEXT_FIELDS)}
                fields = np.array([field_of[f] for f in spec.corpus_fields], np.int64)
                q, c = arrays["image"][at_t[spec.query_pins]], arrays["text"][at_t[spec.corpus_pins], fields]
            elif task == "pintext_t2i":
                rows = at_t[spec.query_pins]
                first = arrays["text_mask"][rows].argmax(1)  # (Q,) the title, else the first present field
                q, c = arrays["text"][rows, first], arrays["image"][at_t[spec.corpus_pins]]
            elif task == "related":
                q, c = arrays["related"][at_p[spec.query_pins]], arrays["related"][at_p[spec.corpus_pins]]
            else:
                q, c = encoder.query_vectors(list(spec.query_texts)), arrays["search"][at_p[spec.corpus_pins]]
            out.setdefault(task, {})[split] = TaskVectors(q, c, spec.relevant, spec.exclude)
    return out, arrays


def prefix(x: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` coordinates of each row (N, D), re-normalized (a Matryoshka embedding)."""
    x = x[:, :dim]  # (N, dim)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def calibration_mix(arrays: dict[str, np.ndarray], dim: int, seed: int = 0) -> np.ndarray:
    """A sample mixing every embedded kind (image, text fields, pin) of width `dim`: (M, dim)."""
    rng = np.random.default_rng(seed)
    parts, seen = [], set()
    for name, x in sorted(arrays.items()):
        if name == "text_mask" or x.shape[-1] != dim or id(x) in seen:  # "related" may be "search"
            continue
        seen.add(id(x))
        if name == "text":
            x = x[arrays["text_mask"]]  # (N_present, D)
        keep = rng.choice(len(x), size=min(len(x), CALIBRATION_PINS), replace=False)
        parts.append(x[np.sort(keep)])
    return np.concatenate(parts)


def ann_top10(vectors: TaskVectors, quant: GlobalAffine, version: str, ann_min: int) -> tuple[np.ndarray, str]:
    """Top-10 corpus positions (Q, 10) from the server's FAISS index over the int8 corpus."""
    from pinclip.serve.index import IndexConfig, PinIndex

    n = len(vectors.corpus)
    kind = "ivf" if n >= ann_min else "flat"
    index = PinIndex.build(quantize(vectors.corpus, quant), [str(i) for i in range(n)], quant, version,
                           config=IndexConfig(kind=kind))
    extra = 0 if vectors.exclude is None else 1
    _, found = index.search(vectors.queries, 10 + extra)
    ids = np.full((len(vectors.queries), 10), -1, np.int64)
    for q, row in enumerate(found):
        kept = [int(i) for i in row if vectors.exclude is None or int(i) != vectors.exclude[q]][:10]
        ids[q, : len(kept)] = kept
    params = ", ".join(f"{k}={v}" for k, v in index.meta.params.items() if k in ("nlist", "nprobe"))
    return ids, f"{kind}({params})" if params else kind


def quantization_recalls(vectors: TaskVectors, quant: GlobalAffine, mix: np.ndarray, fp32: float,
                         version: str, ann: bool, ann_min: int) -> dict[str, Any]:
    """Recall@10 at fp32, global int8, per-dimension int8 and through the ANN index."""
    def recall10(q: np.ndarray, c: np.ndarray) -> float:
        return float(retrieval_metrics(q, c, vectors.relevant, ks=(10,), exclude=vectors.exclude)["recall@10"])

    per_dim = fit_per_dim_affine(mix)
    out: dict[str, Any] = {
        "fp32": fp32,
        "int8_global": recall10(dequantize(quantize(vectors.queries, quant), quant),
                                dequantize(quantize(vectors.corpus, quant), quant)),
        "int8_per_dim": recall10(dequantize_per_dim(quantize_per_dim(vectors.queries, per_dim), per_dim),
                                 dequantize_per_dim(quantize_per_dim(vectors.corpus, per_dim), per_dim)),
        "ann": None,
    }
    if ann:
        ids, kind = ann_top10(vectors, quant, version, ann_min)
        out["ann"] = float(recall_at_k(ids, vectors.relevant, ks=(10,))["recall@10"])
        out["ann_index"] = kind
    return out


def _metrics(v: TaskVectors, dim: int | None = None) -> dict[str, Any]:
    q, c = (v.queries, v.corpus) if dim is None else (prefix(v.queries, dim), prefix(v.corpus, dim))
    return {**retrieval_metrics(q, c, v.relevant, ks=KS, exclude=v.exclude), "corpus": int(len(c))}


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    dataset: Dataset,
    splits: dict[str, Any] | None = None,
    all_test: bool = False,
    dims: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    max_queries: int = 1000,
    ann: bool = True,
    tasks: Sequence[str] | None = None,
    quantization: bool = True,
    max_pins: int = 2000,
    ann_min: int = 500,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of one model on every task and split (see the module docstring for the layout)."""
    started = time.perf_counter()
    unknown = sorted(set(tasks or ()) - set(TASKS))
    if unknown:
        raise UserError(f"unknown tasks {unknown}; known: {', '.join(TASKS)}")
    device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    encoder = load_encoder(checkpoint_dir, device)
    dims = _check_dims(dims, encoder.dims)
    splits = all_test_splits(dataset) if all_test else (splits if splits is not None else dataset.splits)
    has_image = encoder.prepare(dataset.pins, cache_dir, progress)
    specs = build_tasks(dataset, splits, has_image, max_queries, max_pins)
    specs = {t: s for t, s in specs.items() if tasks is None or t in tasks}
    if not specs:
        raise UserError("no evaluation task has a query: the splits hold out no pins or boards with ground truth")
    vectors, arrays = embed_tasks(encoder, specs, len(dataset.pins))
    result: dict[str, Any] = {"dims": {d: {} for d in dims}, "quantization": {}, "notes": {}}
    mixes: dict[int, np.ndarray] = {}
    for task, by_split in tqdm(specs.items(), desc="evaluate", unit="task", disable=not progress):
        if task not in vectors:
            result[task] = {split: None for split in by_split}
            result["notes"][task] = encoder.notes.get(task, "this model cannot score the task")
            continue
        result[task] = {}
        for split, v in vectors[task].items():
            full = result[task][split] = _metrics(v)
            for d in dims:
                result["dims"][d].setdefault(task, {})[split] = full if d == encoder.dims[0] else _metrics(v, d)
            if quantization:
                width = v.corpus.shape[1]
                mix = mixes.setdefault(width, calibration_mix(arrays, width))
                quant = encoder.quant or fit_global_affine(mix, method="percentile", percentile=99.99)
                result["quantization"].setdefault(task, {})[split] = quantization_recalls(
                    v, quant, mix, full["recall@10"], encoder.version, ann, ann_min)
    result["meta"] = _meta(encoder, checkpoint_dir, dataset, splits, specs, all_test, started)
    return result


def _check_dims(dims: Sequence[int] | None, model_dims: list[int]) -> list[int]:
    """The Matryoshka dims to report (all of the model's by default; none for a model without them)."""
    if dims is None or not model_dims:
        return list(model_dims)
    unknown = sorted(set(dims) - set(model_dims))
    if unknown:
        raise UserError(f"dims {unknown} are not Matryoshka dims of this model (it has {model_dims})")
    return [d for d in model_dims if d in dims]


def _meta(encoder: PinEncoder, checkpoint_dir: str | Path, dataset: Dataset, splits: dict[str, Any],
          specs: dict[str, dict[str, TaskSpec]], all_test: bool, started: float) -> dict[str, Any]:
    heldout = set(splits.get("heldout_boards") or [])
    return {
        "checkpoint": str(resolve_checkpoint(checkpoint_dir)), "kind": encoder.kind, "version": encoder.version,
        "dims": encoder.dims, "quant": "checkpoint" if encoder.quant else "fitted on the eval corpus",
        "all_test": all_test,
        "dataset": {"pins": len(dataset.pins), "boards": dataset.edges.num_boards, "edges": dataset.edges.num_edges,
                    "cold_start_pins": len(splits.get("cold_start_pins") or []),
                    "heldout_boards": len(heldout), "pins_path": dataset.pins.path},
        "tasks": {t: {s: {"queries": spec.num_queries, "corpus": len(spec.corpus_pins), **spec.counts}
                      for s, spec in by_split.items()} for t, by_split in specs.items()},
        "splits": [s for s in SPLITS if any(s in by_split for by_split in specs.values())],
        "seconds": round(time.perf_counter() - started, 1),
    }

