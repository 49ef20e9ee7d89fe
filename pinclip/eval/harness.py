"""The evaluation harness: one model (a checkpoint or baseline folder) on the retrieval tasks of a dataset.

    pinclip eval --checkpoint runs/demo/train/final --data-dir runs/demo/data [--partition val]
    result = evaluate_checkpoint("runs/demo/train/final", load_dataset_dir("runs/demo/data"),
                                 partition="test", cache_dir="runs/demo/cache", trec_dir="runs/demo/eval/trec")

Tasks, splits, regimes and the full-catalog corpus come from `pinclip.eval.tasks`; the model from
`pinclip.eval.encoders.load_encoder` (PinCLIP, frozen towers, BM25). Every query is ranked to depth
100 by exact inner-product search (or by the ranker), then scored per query
(`pinclip.eval.metrics.per_query_metrics`) and summarized with 95% bootstrap intervals over clusters of queries
(`pinclip.eval.stats`).

Result, for one model:
    {"metrics": {task: {split: {regime: {"ndcg@10": mean, "ndcg@10_ci": [low, high], "recall@10", ...,
                                          "queries", "corpus"} | None}}},       None: cannot score
     "per_query": {task: {split: {regime: {metric: (Q,) array, "query_ids": [...], "clusters": [...]}}}},
                  seen@10 is the share of a query's top 10 that are training pins (seen_at_k)
                  for paired tests; "clusters" names the cluster the bootstrap resamples (TaskSpec.clusters)
     "dims": {dim: {task: {split: {"recall@10", "ndcg@10"}}}},      Matryoshka prefixes, regime "full"
     "quantization": {task: {split: {kind: {"recall@10", "ndcg@10"}}}}, kind in fp32, int8_global,
                     int8_per_dim, ann (+ "ann_index"), regime "full"
     "notes": {task: why it is None}, "meta": {...}}
int8_global applies the checkpoint's global affine parameters to queries and corpus; int8_per_dim
fits per-dimension ranges on a mix of the model's image, text and pin embeddings of the corpus; ann
searches the server's FAISS index (IVF from `ann_min` corpus items, else flat) over int8 codes with
fp32 queries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pinclip.cli import UserError
from pinclip.eval.encoders import TaskVectors, load_encoder, resolve_checkpoint
from pinclip.eval.metrics import exact_topk, per_query_metrics
from pinclip.eval.stats import seed_summary
from pinclip.eval.tasks import REGIMES, SPLITS, TASKS, EvalData, TaskSpec, build_eval_tasks
from pinclip.eval.trec import file_stem, write_qrels, write_run
from pinclip.quant import (
    dequantize,
    dequantize_per_dim,
    fit_global_affine,
    fit_per_dim_affine,
    quantize,
    quantize_per_dim,
)

DEPTH = 100
RECALL_KS: tuple[int, ...] = (10, 100)
SUMMARY_METRICS: tuple[str, ...] = ("ndcg@10", "recall@10", "recall@100", "ceiling@10", "ceiling@100", "mrr",
                                    "hit@10", "seen@10")
CALIBRATION = 2000  # vectors of each kind in the per-dimension calibration mix


def all_test_splits(dataset: Any) -> dict[str, Any]:
    """Splits that make the whole dataset test data: every pin cold, every board held out."""
    return {"seed": 0, "cold_start_pins": list(dataset.pins.pin_ids), "val_pins": [],
            "heldout_boards": list(dataset.edges.board_ids)}


def seen_at_k(ids: np.ndarray, trained: np.ndarray, k: int = 10) -> np.ndarray:
    """(Q,) share of each query's top k (corpus positions, -1 for none) that are training pins; `trained` (N,)
    marks the corpus positions whose pin is neither cold-start nor validation. A model that favours the pins it
    trained on shows it here: on cold queries the relevant pins are all unseen."""
    top = ids[:, :k]
    valid = top >= 0
    seen = valid & trained[np.maximum(top, 0)]
    return seen.sum(1) / np.maximum(valid.sum(1), 1)


def trained_corpus(spec: TaskSpec, pin_ids: Sequence[str], splits: dict[str, Any]) -> np.ndarray:
    """(N,) whether each corpus entry's pin is a training pin of the splits."""
    held = set(splits.get("cold_start_pins") or []) | set(splits.get("val_pins") or [])
    return np.array([pin_ids[p] not in held for p in spec.corpus_pins], bool)


def summarize(values: dict[str, np.ndarray], corpus: int, clusters: Sequence[str] | None = None) -> dict[str, Any]:
    """Means and 95% bootstrap intervals of per-query metrics (clusters of queries resampled whole)."""
    out: dict[str, Any] = {"queries": int(len(values["rows"])), "corpus": int(corpus)}
    for name in SUMMARY_METRICS:
        v = values[name]
        out[name] = float(v.mean()) if len(v) else float("nan")
        if not name.startswith("ceiling"):
            s = seed_summary([v], clusters=clusters)
            out[f"{name}_ci"] = [s["low"], s["high"]]
    return out


def prefix(x: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` coordinates of each row (N, D), re-normalized (a Matryoshka embedding)."""
    x = x[:, :dim]  # (N, dim)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _two_metrics(ids: np.ndarray, spec: TaskSpec) -> dict[str, float]:
    m = per_query_metrics(ids, spec.relevant, ks=(10,))
    return {"recall@10": float(m["recall@10"].mean()), "ndcg@10": float(m["ndcg@10"].mean())}


def _exact_ids(queries: np.ndarray, corpus: np.ndarray, spec: TaskSpec, depth: int = 10) -> np.ndarray:
    return exact_topk(queries, corpus, min(depth, len(corpus)), exclude=spec.exclude)[1]


def _padded(ids: np.ndarray, depth: int) -> np.ndarray:
    if ids.shape[1] >= depth:
        return ids
    return np.concatenate([ids, np.full((len(ids), depth - ids.shape[1]), -1, np.int64)], axis=1)


def ann_ids(v: TaskVectors, spec: TaskSpec, quant: Any, version: str, ann_min: int) -> tuple[np.ndarray, str]:
    """Top-10 corpus positions (Q, 10) from the server's FAISS index over the int8 corpus."""
    from pinclip.serve.index import IndexConfig, PinIndex

    n = len(v.corpus)
    kind = "ivf" if n >= ann_min else "flat"
    index = PinIndex.build(quantize(v.corpus, quant), [str(i) for i in range(n)], quant, version,
                           config=IndexConfig(kind=kind))
    extra = max((len(e) for e in spec.exclude or []), default=0)
    _, found = index.search(v.queries, min(10 + extra, n))
    ids = np.full((len(v.queries), 10), -1, np.int64)
    for q, row in enumerate(found):
        drop = set(spec.exclude[q].tolist()) if spec.exclude is not None else set()
        kept = [int(i) for i in row if int(i) >= 0 and int(i) not in drop][:10]
        ids[q, : len(kept)] = kept
    params = ", ".join(f"{k}={v}" for k, v in index.meta.params.items() if k in ("nlist", "nprobe"))
    return ids, f"{kind}({params})" if params else kind


def quantization_metrics(v: TaskVectors, spec: TaskSpec, quant: Any, mix: np.ndarray, fp32: dict[str, float],
                         version: str, ann: bool, ann_min: int) -> dict[str, Any]:
    """Recall@10 and nDCG@10 at fp32, global int8, per-dimension int8 and through the ANN index."""
    def stored(x: np.ndarray) -> np.ndarray:
        return dequantize(quantize(x, quant), quant)

    per_dim = fit_per_dim_affine(mix)

    def stored_per_dim(x: np.ndarray) -> np.ndarray:
        return dequantize_per_dim(quantize_per_dim(x, per_dim), per_dim)

    out: dict[str, Any] = {
        "fp32": fp32,
        "int8_global": _two_metrics(_exact_ids(stored(v.queries), stored(v.corpus), spec), spec),
        "int8_per_dim": _two_metrics(_exact_ids(stored_per_dim(v.queries), stored_per_dim(v.corpus), spec), spec),
        "ann": None,
    }
    if ann:
        ids, out["ann_index"] = ann_ids(v, spec, quant, version, ann_min)
        out["ann"] = _two_metrics(ids, spec)
    return out


def calibration_mix(vectors: dict[tuple[str, str, str], TaskVectors], width: int, seed: int = 0) -> np.ndarray:
    """A sample of every embedded corpus and query set of width `width` (image, text, pin): (M, width)."""
    rng = np.random.default_rng(seed)
    parts = []
    for v in vectors.values():
        for x in (v.queries, v.corpus):
            if x.shape[1] == width:
                parts.append(x[np.sort(rng.choice(len(x), size=min(len(x), CALIBRATION // 4), replace=False))])
    return np.concatenate(parts)


def _rank(encoder: Any, spec: TaskSpec) -> tuple[np.ndarray | None, np.ndarray | None, TaskVectors | None]:
    """(ids (Q, DEPTH), scores or None, vectors or None) of one task; ids None when it cannot be scored."""
    if hasattr(encoder, "rank"):
        ids = encoder.rank(spec, DEPTH)
        return (None if ids is None else _padded(ids, DEPTH)), None, None
    v = encoder.vectors(spec)
    if v is None:
        return None, None, None
    scores, ids = exact_topk(v.queries, v.corpus, min(DEPTH, len(v.corpus)), exclude=spec.exclude)
    return _padded(ids, DEPTH), scores, v


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    dataset: Any,
    partition: str = "test",
    splits: dict[str, Any] | None = None,
    all_test: bool = False,
    regimes: Sequence[str] = REGIMES,
    tasks: Sequence[str] | None = None,
    dims: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    max_queries: int = 1000,
    quantization: bool = True,
    ann: bool = True,
    ann_min: int = 500,
    device: str = "cpu",
    progress: bool = True,
    trec_dir: str | Path | None = None,
    name: str = "model",
) -> dict[str, Any]:
    """Metrics of one model on every task, split and regime (see the module docstring for the layout)."""
    started = time.perf_counter()
    tasks = tuple(tasks or TASKS)
    device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    encoder = load_encoder(checkpoint_dir, device)
    dims = _check_dims(dims, getattr(encoder, "dims", []))
    splits = all_test_splits(dataset) if all_test else (splits if splits is not None else dataset.splits)
    encoder.prepare(dataset.pins, cache_dir, progress)
    if hasattr(encoder, "use_neighbors"):  # graph smoothing of warm pins (pinclip.eval.smooth)
        from pinclip.config import GraphConfig
        from pinclip.eval.smooth import training_neighbors

        encoder.use_neighbors(training_neighbors(dataset, splits, GraphConfig()))
    try:
        specs = build_eval_tasks(EvalData.from_dataset(dataset, splits=splits), partition, regimes, tasks,
                                 max_queries=max_queries)
    except ValueError as err:
        raise UserError(f"cannot build evaluation tasks: {err}") from None
    if not specs:
        raise UserError("no evaluation task has a query: the splits hold out no pins or boards with ground truth")
    result: dict[str, Any] = {"metrics": {}, "per_query": {}, "dims": {d: {} for d in dims}, "quantization": {},
                              "notes": {}}
    cells = [(t, s, r, spec) for t, by_split in specs.items() for s, by_regime in by_split.items()
             for r, spec in by_regime.items()]
    embedded: dict[tuple[str, str, str], TaskVectors] = {}
    for task, split, regime, spec in tqdm(cells, desc=f"evaluate {name}", unit="task", disable=not progress or None):
        ids, scores, vectors = _rank(encoder, spec)
        slot = result["metrics"].setdefault(task, {}).setdefault(split, {})
        if ids is None:
            slot[regime] = None
            result["notes"][task] = encoder.notes.get(task, "this model cannot score the task")
            continue
        values = per_query_metrics(ids, spec.relevant, ks=RECALL_KS)
        values["seen@10"] = seen_at_k(ids, trained_corpus(spec, dataset.pins.pin_ids, splits))[values["rows"]]
        of_query = spec.clusters()
        clusters = [of_query[q] for q in values["rows"]]
        slot[regime] = summarize(values, len(spec.corpus_ids), clusters)
        result["per_query"].setdefault(task, {}).setdefault(split, {})[regime] = {
            **{k: values[k] for k in SUMMARY_METRICS}, "query_ids": [spec.query_ids[q] for q in values["rows"]],
            "clusters": clusters}
        if trec_dir is not None:
            _write_trec(Path(trec_dir), name, spec, ids, scores)
        if vectors is not None and regime == "full" and (quantization or dims):
            embedded[(task, split, regime)] = vectors
    _dims_and_quantization(result, encoder, specs, embedded, dims, quantization, ann, ann_min)
    result["meta"] = _meta(encoder, checkpoint_dir, dataset, splits, specs, partition, all_test, started)
    return result


def _write_trec(folder: Path, name: str, spec: TaskSpec, ids: np.ndarray, scores: np.ndarray | None) -> None:
    stem = file_stem(spec.task, spec.split, spec.regime)
    write_qrels(folder / "qrels" / f"{stem}.qrels", spec.query_ids, spec.corpus_ids, spec.relevant)  # never stale
    write_run(folder / name / f"{stem}.run.gz", spec.query_ids, spec.corpus_ids, ids, scores, name)


def _dims_and_quantization(result: dict[str, Any], encoder: Any, specs: dict, embedded: dict, dims: list[int],
                           quantization: bool, ann: bool, ann_min: int) -> None:
    """Matryoshka prefixes and int8 / ANN storage, on the "full" regime of every dense task."""
    mixes: dict[int, np.ndarray] = {}
    for (task, split, regime), v in embedded.items():
        spec = specs[task][split][regime]
        full = _two_metrics(_exact_ids(v.queries, v.corpus, spec), spec)
        for d in dims:
            result["dims"][d].setdefault(task, {})[split] = full if d == dims[0] else _two_metrics(
                _exact_ids(prefix(v.queries, d), prefix(v.corpus, d), spec), spec)
        if quantization:
            width = v.corpus.shape[1]
            mix = mixes.setdefault(width, calibration_mix(embedded, width))
            quant = encoder.quant or fit_global_affine(mix, method="percentile", percentile=99.99)
            result["quantization"].setdefault(task, {})[split] = quantization_metrics(
                v, spec, quant, mix, full, encoder.version, ann, ann_min)


def _check_dims(dims: Sequence[int] | None, model_dims: list[int]) -> list[int]:
    """The Matryoshka dims to report (all of the model's by default; none for a model without them)."""
    if dims is None or not model_dims:
        return list(model_dims)
    unknown = sorted(set(dims) - set(model_dims))
    if unknown:
        raise UserError(f"dims {unknown} are not Matryoshka dims of this model (it has {model_dims})")
    return [d for d in model_dims if d in dims]


def training_cost(encoder: Any) -> dict[str, float | None]:
    """Wall seconds and FLOPs (forward and backward, counted by the trainer) of the model's training; a mix adds
    nothing to its trained model's; None for untrained models and checkpoints that did not record them."""
    model = getattr(encoder, "model", None)
    meta = getattr(model, "meta", None) or getattr(encoder, "meta", None) or {}
    if not isinstance(meta, dict) or "seconds" not in meta:
        return {"seconds": None, "flops": None}
    return {"seconds": float(meta["seconds"]), "flops": meta.get("train_flops")}


def _meta(encoder: Any, checkpoint_dir: str | Path, dataset: Any, splits: dict[str, Any], specs: dict,
          partition: str, all_test: bool, started: float) -> dict[str, Any]:
    return {
        "checkpoint": str(resolve_checkpoint(checkpoint_dir)), "kind": encoder.kind, "version": encoder.version,
        "training": training_cost(encoder),
        "dims": list(getattr(encoder, "dims", [])),
        "quant": "checkpoint" if getattr(encoder, "quant", None) else "fitted on the eval corpus",
        "partition": partition, "all_test": all_test,
        "dataset": {"pins": len(dataset.pins), "boards": dataset.edges.num_boards, "edges": dataset.edges.num_edges,
                    "cold_start_pins": len(splits.get("cold_start_pins") or []),
                    "val_pins": len(splits.get("val_pins") or []),
                    "heldout_boards": len(splits.get("heldout_boards") or []),
                    "val_boards": len(splits.get("val_boards") or []), "pins_path": dataset.pins.path},
        "tasks": {t: {s: {r: {"queries": spec.num_queries, "corpus": len(spec.corpus_ids), **spec.counts}
                          for r, spec in by_regime.items()} for s, by_regime in by_split.items()}
                  for t, by_split in specs.items()},
        "splits": [s for s in SPLITS if any(s in by_split for by_split in specs.values())],
        "seconds": round(time.perf_counter() - started, 1),
    }
