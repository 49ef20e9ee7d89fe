"""Graph smoothing of warm pins at inference (the "smooth" step of Correct & Smooth, Huang et al. 2021).

    pinclip eval --run runs/demo --smooth 0.5 --partition val        # every model, smoothed, beside itself
    folder = create_smoothed("runs/demo/train/final", 0.5, "runs/demo/smoothed/pinclip-a0.5")

A pin that is already in the training graph has neighbors the random walks know (pinclip.graph). Its
served pin embedding can borrow from them:

    pin'(p) = unit(pin(p) + alpha * mean of pin(n) over its top-k walk neighbors n)      (warm pins only)

Cold pins have no edges and keep their embedding; the cold cells (whose corpora hold warm pins too) are
scored without any smoothing, so they measure exactly what they measured. In the warm Related Pins and
Search cells the warm pins' pin vectors are smoothed (corpus and queries), never image or text vectors. It costs no training, so the report shows it for every model
(`<model>+smooth@alpha`); alpha is chosen on validation like any setting. Neighbors come from the training
graph of the splits (no held-out board, no cold or validation pin), walked with the default graph settings
(pinclip.config.GraphConfig).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.eval.protocol import TaskVectors, unit
from pinclip.eval.tasks import TaskSpec

KIND = "smoothed"


def smooth_pins(pins: np.ndarray, neighbors: np.ndarray, alpha: float) -> np.ndarray:
    """(P, D) unit(pins + alpha * mean of each row's neighbor rows); rows whose neighbors are all -1 unchanged."""
    valid = neighbors >= 0  # (P, K)
    count = valid.sum(1, keepdims=True)  # (P, 1)
    gathered = pins[np.where(valid, neighbors, 0)] * valid[..., None]  # (P, K, D)
    mean = gathered.sum(1) / np.maximum(count, 1)  # (P, D)
    return np.where(count > 0, unit(pins + alpha * mean), pins).astype(np.float32)


def training_neighbors(dataset: Any, splits: dict, graph_cfg: Any, seed: int = 0) -> np.ndarray:
    """(P, top_k) walk neighbors of every pin on the training graph of `splits`, -1 padding (cold pins: none)."""
    from pinclip.data.splits import training_edge_mask
    from pinclip.graph.csr import BipartiteGraph
    from pinclip.graph.random_walk import RandomWalkConfig, mine_neighbors

    edges = dataset.edges
    edge_pins = [dataset.pins.pin_ids[i] for i in edges.pin_index.tolist()]
    edge_boards = [edges.board_ids[b] for b in edges.board_index.tolist()]
    keep = training_edge_mask(edge_pins, edge_boards, splits)
    graph = BipartiteGraph.from_arrays(np.asarray(edges.pin_index)[keep], np.asarray(edges.board_index)[keep],
                                       len(dataset.pins), edges.num_boards)
    walk = RandomWalkConfig(graph_cfg.walkers_per_pin, graph_cfg.walk_length, graph_cfg.restart_prob, graph_cfg.top_k,
                            graph_cfg.board_damping, seed)
    return mine_neighbors(graph, walk, progress=False).neighbors


class SmoothedEncoder:
    """A dense encoder whose warm pins' pin vectors are smoothed over their walk neighbors (module docstring)."""

    kind = KIND
    dims: list[int] = []

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        from pinclip.eval.encoders import load_encoder

        meta = json.loads((Path(folder) / "meta.json").read_text())
        self.alpha = float(meta["alpha"])
        self.inner = load_encoder(meta["checkpoint"], device)
        self.version, self.notes = str(meta["version"]), self.inner.notes
        self.quant = getattr(self.inner, "quant", None)
        self.dims = list(getattr(self.inner, "dims", []))
        self.model = self.inner

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> None:
        self.inner.prepare(pins, cache_dir, progress)
        self.pins = pins

    def use_neighbors(self, neighbors: np.ndarray) -> None:
        """(P, K) catalog neighbors (training_neighbors) of the dataset being evaluated."""
        self.neighbors = neighbors

    def vectors(self, spec: TaskSpec) -> TaskVectors | None:
        v = self.inner.vectors(spec)
        if v is None or spec.task not in ("related", "search") or spec.split != "warm":
            return v  # cold cells judge the representation of new pins: left exactly as the model gives them
        where = np.full(len(self.neighbors), -1, np.int64)
        where[spec.corpus_pins] = np.arange(len(spec.corpus_pins))
        local = np.where(self.neighbors[spec.corpus_pins] >= 0, where[np.maximum(self.neighbors[spec.corpus_pins], 0)],
                         -1)  # (N, K) neighbors as corpus rows; those outside the regime's corpus dropped
        corpus = smooth_pins(v.corpus, local, self.alpha)
        queries = corpus[where[spec.query_pins]] if spec.task == "related" else v.queries
        return TaskVectors(queries, corpus)


def create_smoothed(checkpoint: str | Path, alpha: float, folder: str | Path) -> Path:
    """Write a smoothed model's folder over any model folder (checkpoint, baseline or mix); returns it."""
    from pinclip.eval.encoders import resolve_checkpoint

    if alpha < 0:
        raise ValueError(f"smoothing alpha must be >= 0, got {alpha}")
    checkpoint = resolve_checkpoint(checkpoint)
    inner = json.loads((checkpoint / "meta.json").read_text())
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"kind": KIND, "checkpoint": str(checkpoint.resolve()), "alpha": float(alpha), "dims": [],
            "version": f"{inner['version']}-smooth{alpha:g}"}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
