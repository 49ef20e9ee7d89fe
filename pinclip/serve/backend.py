"""The index-backend interface the server and `pinclip index` program against, and how one is opened.

    pinclip serve --index runs/demo/index ...                               # FAISS folder (faiss_backend.py)
    pinclip serve --backend milvus --uri runs/demo/pins.db --collection pins ...   # Milvus (milvus_backend.py)

A backend holds int8 pin embeddings under string pin ids, with a card per pin written through it
(title and image bytes, for the results page), and answers top-k inner-product searches. `put`
adds or replaces pins and `delete` removes them; both are durable when they return. Writes of
another model version are refused with VersionConflict (HTTP 409).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from pinclip.serve.index import IndexMeta, PinIndexError

BACKENDS = ("faiss", "milvus")


class VersionConflict(PinIndexError):
    """A write whose model version differs from the index's."""


class IndexBackend(Protocol):
    name: str  # "faiss" or "milvus"
    meta: IndexMeta  # kind, dim, field, model_version, quant, params

    def __len__(self) -> int: ...

    def __contains__(self, pin_id: object) -> bool: ...

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Scores (Q, k) and pin ids per query for float queries (Q, D); NaN scores pad short rows."""

    def search_by_id(self, pin_id: str, k: int, exclude_self: bool = True) -> tuple[np.ndarray, list[str]]:
        """Nearest pins to a stored pin; KeyError when the pin is not there."""

    def put(self, pin_ids: list[str], codes: np.ndarray, cards: list[dict[str, Any]], model_version: str) -> None:
        """Add or replace pins (int8 codes (N, D)), durable on return."""

    def delete(self, pin_ids: list[str]) -> int:
        """Remove pins, durable on return; returns how many were present."""

    def card(self, pin_id: str) -> dict[str, Any] | None:
        """{"title", "image" (bytes or None)} of a pin written through the backend, else None."""

    def close(self) -> None: ...


def check_version(meta: IndexMeta, model_version: str) -> None:
    if str(model_version) != meta.model_version:
        raise VersionConflict(f"the index holds embeddings of model {meta.model_version}; this write is from "
                              f"model {model_version}")


def open_backend(backend: str, index: str | None = None, uri: str | None = None, collection: str = "pins",
                 token: str | None = None) -> IndexBackend:
    """The FAISS index folder `index` (locked for this process), or the Milvus collection at `uri`."""
    if backend == "faiss":
        if not index:
            raise PinIndexError("the faiss backend needs --index (an index folder from `pinclip index build`)")
        from pinclip.serve.faiss_backend import FaissBackend

        return FaissBackend.open(index)
    if backend == "milvus":
        if not uri:
            raise PinIndexError("the milvus backend needs --uri (a Milvus Lite file such as pins.db, or http://host:19530)")
        from pinclip.serve.milvus_backend import MilvusBackend

        return MilvusBackend.open(uri, collection, token)
    raise PinIndexError(f"unknown index backend {backend!r}; use one of {', '.join(BACKENDS)}")
