"""The `bm25` baseline: lexical retrieval over pin text (bm25s, English stop words, Snowball stemmer).

    create_bm25("runs/demo/baselines/bm25")      # a folder `pinclip eval --checkpoint` loads

A pin's document is its kept text fields (per text regime) joined; Related Pins uses the query pin's
document as the query, Search the board title. BM25 reads no image: PinText and the image regime are
not scored, and a pin whose document shares no term with the query is not retrieved at all (results
with a zero score are dropped). Where BM25 matches or beats every learned model, the task is
lexically solvable and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pinclip.baselines.frozen import write_baseline_folder
from pinclip.eval.tasks import PINTEXT, TaskSpec, pin_fields, regime_mask

NO_IMAGE = "BM25 reads text only: image<->text retrieval and image-only pins cannot be scored"
STOPWORDS = "en"


class BM25Ranker:
    kind = "bm25"

    def __init__(self, folder: str | Path | None = None, k1: float = 1.5, b: float = 0.75) -> None:
        self.version = f"bm25s-k1={k1}-b={b}"
        self.k1, self.b = k1, b
        self.notes = {task: NO_IMAGE for task in PINTEXT}

    def prepare(self, pins: Any, cache_dir: str | Path | None, progress: bool) -> None:
        import Stemmer

        self.fields = pin_fields(pins.pin_ids, pins.texts)
        self.stemmer = Stemmer.Stemmer("english")
        self._docs: dict[str, list[str]] = {}

    def documents(self, regime: str) -> list[str]:
        """Per pin, the text of the fields kept in `regime`, joined."""
        if regime not in self._docs:
            mask = regime_mask(self.fields, regime)
            self._docs[regime] = [" ".join(t for f, t in present if mask[p, f]) for p, present in enumerate(self.fields)]
        return self._docs[regime]

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, stopwords=STOPWORDS, stemmer=self.stemmer, return_ids=False,
                              show_progress=False)

    def rank(self, spec: TaskSpec, depth: int) -> np.ndarray | None:
        """(Q, depth) corpus positions by BM25 score, -1 padded; None where BM25 cannot score."""
        import bm25s

        if spec.task in PINTEXT or spec.regime == "image":
            self.notes.setdefault(spec.task, NO_IMAGE)
            return None
        docs = self.documents(spec.regime)
        corpus = [docs[p] for p in spec.corpus_pins]
        queries = list(spec.query_texts) if spec.task == "search" else [docs[p] for p in spec.query_pins]
        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.index(self._tokens(corpus), show_progress=False)
        extra = max((len(e) for e in spec.exclude or []), default=0)
        k = min(depth + extra, len(corpus))
        found, scores = retriever.retrieve(self._tokens(queries), k=k, show_progress=False, n_threads=1)
        out = np.full((len(queries), depth), -1, np.int64)
        for q in range(len(queries)):
            drop = set(spec.exclude[q].tolist()) if spec.exclude is not None else set()
            kept = [int(i) for i, s in zip(found[q], scores[q]) if s > 0 and int(i) not in drop][:depth]
            out[q, : len(kept)] = kept
        return out


def create_bm25(folder: str | Path) -> Path:
    meta = {"kind": "bm25", "baseline": "bm25", "version": "bm25s-k1=1.5-b=0.75", "dims": [],
            "stemmer": "snowball english", "stopwords": STOPWORDS}
    return write_baseline_folder(folder, meta)
