"""TREC run and qrels files of an evaluation, so any IR toolkit (ranx, trec_eval) can re-score it.

    <out>/trec/qrels/<task>.<split>.<regime>.qrels       qid 0 docid 1       (relevant items only)
    <out>/trec/<model>/<task>.<split>.<regime>.run.gz    qid Q0 docid rank score tag   (top `depth`)

Run scores are the similarities the ranking used, nudged by 1e-11 per rank so that tied items keep
the harness's order (score, then corpus position) under any evaluator's sort. Excluded items (the
query's duplicates, relevant pins of another split) are absent from both files. Files are written
to a temporary name and renamed into place.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_qrels(path: Path, query_ids: Sequence[str], corpus_ids: Sequence[str], relevant: Sequence[np.ndarray]
                ) -> None:
    lines = [f"{query_ids[q]} 0 {corpus_ids[j]} 1\n" for q, rel in enumerate(relevant) for j in rel.tolist()]
    _atomic_write(path, "".join(lines).encode())


def write_run(path: Path, query_ids: Sequence[str], corpus_ids: Sequence[str], ids: np.ndarray,
              scores: np.ndarray | None, tag: str) -> None:
    """Ranked corpus positions ids (Q, K), -1 padded, and their scores (Q, K) or None (reverse rank)."""
    lines = []
    for q, row in enumerate(ids):
        for rank, j in enumerate(row.tolist()):
            if j < 0:
                break
            score = float(scores[q, rank]) if scores is not None else float(ids.shape[1] - rank)
            lines.append(f"{query_ids[q]} Q0 {corpus_ids[j]} {rank + 1} {score - rank * 1e-11:.12f} {tag}\n")
    _atomic_write(path, gzip.compress("".join(lines).encode(), mtime=0))


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in Path(path).read_text().splitlines():
        qid, _, doc, rel = line.split()
        out.setdefault(qid, {})[doc] = int(rel)
    return out


def read_run(path: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in gzip.decompress(Path(path).read_bytes()).decode().splitlines():
        qid, _, doc, _, score, _ = line.split()
        out.setdefault(qid, {})[doc] = float(score)
    return out


def file_stem(task: str, split: str, regime: str) -> str:
    return f"{task}.{split}.{regime}"
