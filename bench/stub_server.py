"""The PinCLIP HTTP service over a saved index, with a stub embedder, for the search-latency benchmark.

    python -m bench.stub_server --index DIR --queries queries.npy --port 8765

The stub's embed_texts("q<i>") returns row i of queries.npy (held-out vectors from the benchmark's
distribution), so an HTTP search costs what the service adds around the index, not a model.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np


class StubEmbedder:
    """embed_texts(["q17"]) -> queries[17:18]; anything else maps to row 0."""

    def __init__(self, queries: np.ndarray, version: str, quant) -> None:
        self.queries, self.version, self.quant = queries, version, quant
        self.dim = int(queries.shape[1])
        self.dims = [self.dim]

    def embed_texts(self, texts: list[str], field: str = "title") -> np.ndarray:
        rows = [int(m.group(1)) % len(self.queries) if (m := re.fullmatch(r"q(\d+)", t)) else 0 for t in texts]
        return self.queries[rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    import uvicorn

    from pinclip.serve.app import create_app
    from pinclip.serve.index import PinIndex

    index = PinIndex.load(args.index)
    embedder = StubEmbedder(np.load(args.queries), index.meta.model_version, index.quant)
    app = create_app(embedder, index, pins_meta={}, token=None)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
