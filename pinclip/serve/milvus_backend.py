"""The index backend on Milvus through pymilvus' MilvusClient: Milvus Lite (a local file) or a cluster (a URI).

    pinclip index build --embeddings runs/demo/embed --backend milvus --uri runs/demo/pins.db
    pinclip serve --backend milvus --uri runs/demo/pins.db --checkpoint runs/demo/train/final
    pinclip index build ... --backend milvus --uri http://milvus:19530 --milvus-token root:Milvus

One collection per index: pin_id (VARCHAR primary key), vector (FLOAT_VECTOR) and the title of
pins added over HTTP (their images are not kept: serve them from the FAISS backend). The vectors are the global-int8
codes dequantized, x_dq = s·(x_q − z), so inner products equal the FAISS path's. Milvus Lite
refuses INT8_VECTOR, so FLOAT_VECTOR is stored everywhere; the index is FLAT (exact) on Milvus
Lite and IVF_SQ8 (8-bit scalar quantization inside Milvus, nlist = 4·√N, nprobe 32) on a cluster.
The index's meta (model version, quantization, field, dim) is kept as JSON in the collection
property `pinclip_meta`. Writes are upserts and deletes by primary key; how durable they are when they
return is Milvus's guarantee (a cluster's write-ahead log; Milvus Lite's local file), not the FAISS
folder's fsynced log.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import numpy as np

from pinclip.cli import UserError
from pinclip.quant import dequantize, quant_from_json, quant_to_json
from pinclip.serve.backend import check_version
from pinclip.serve.index import IndexMeta, PinIndexError

MAX_ID, MAX_TITLE = 512, 8192  # bytes
TITLE_CACHE = 4096  # titles seen in recent search results, so cards need no extra round trip
INSERT_BATCH = 2000
META_PROPERTY = "pinclip_meta"


def _client(uri: str, token: str | None) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise UserError("the milvus backend needs pymilvus (and milvus-lite for a local file): "
                        "pip install 'pinclip[milvus]'") from None
    try:
        return MilvusClient(uri=uri, token=token or "")
    except Exception as err:  # noqa: BLE001 - pymilvus raises many kinds on a bad URI or a server it cannot reach
        raise PinIndexError(f"cannot connect to Milvus at {uri}: {err}") from None


def _hit_id(hit: Any) -> Any:
    return hit["pin_id"] if "pin_id" in hit else hit["id"]


def is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


def index_params(client: Any, uri: str, index_type: str, n: int) -> tuple[Any, dict[str, Any]]:
    """The vector index to create and the search params that go with it."""
    kind = index_type.upper() if index_type.lower() != "auto" else ("FLAT" if is_lite(uri) else "IVF_SQ8")
    params = client.prepare_index_params()
    build: dict[str, Any] = {}
    search: dict[str, Any] = {}
    if kind.startswith("IVF"):
        build = {"nlist": int(max(1, min(65536, 4 * math.sqrt(max(n, 1)))))}
        search = {"nprobe": min(32, build["nlist"])}
    params.add_index(field_name="vector", index_type=kind, metric_type="IP", params=build)
    return params, {"index_type": kind, **build, **search}


class MilvusBackend:
    name = "milvus"

    def __init__(self, client: Any, collection: str, meta: IndexMeta) -> None:
        self.client, self.collection, self.meta = client, collection, meta
        self.lock = threading.Lock()
        self.titles: dict[str, str | None] = {}
        self.count = self._count()

    @classmethod
    def open(cls, uri: str, collection: str = "pins", token: str | None = None) -> MilvusBackend:
        client = _client(uri, token)
        if not client.has_collection(collection):
            raise PinIndexError(f"Milvus at {uri} has no collection {collection!r}; build it with "
                                f"`pinclip index build --backend milvus --uri {uri} --collection {collection}`")
        try:
            meta = IndexMeta(**json.loads(client.describe_collection(collection)["properties"][META_PROPERTY]))
        except (ValueError, TypeError, KeyError):
            raise PinIndexError(f"collection {collection!r} at {uri} was not written by pinclip") from None
        client.load_collection(collection)
        return cls(client, collection, meta)

    @classmethod
    def build(cls, uri: str, collection: str, emb: Any, field: str = "pin", token: str | None = None,
              index_type: str = "auto") -> MilvusBackend:
        """A new collection (replacing one of that name) holding an embedding run's codes."""
        from pymilvus import DataType, MilvusClient

        client = _client(uri, token)
        params, search = index_params(client, uri, index_type, len(emb.pin_ids))
        meta = IndexMeta(f"milvus-{search['index_type'].lower()}", emb.dim, field, str(emb.model_version),
                         quant_to_json(emb.quant, emb.model_version), search, len(emb.pin_ids), [emb.source])
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pin_id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=emb.dim)
        schema.add_field("title", DataType.VARCHAR, max_length=MAX_TITLE, nullable=True)
        if client.has_collection(collection):
            client.drop_collection(collection)
        client.create_collection(collection, schema=schema, index_params=params, consistency_level="Strong",
                                 properties={META_PROPERTY: json.dumps(meta.__dict__, sort_keys=True)})
        backend = cls(client, collection, meta)
        vectors = dequantize(emb.codes, emb.quant)  # (N, D)
        for start in range(0, len(emb.pin_ids), INSERT_BATCH):
            ids = emb.pin_ids[start : start + INSERT_BATCH]
            client.insert(collection, backend._rows(ids, vectors[start : start + INSERT_BATCH], [{}] * len(ids)))
        client.flush(collection)
        client.load_collection(collection)
        backend.count = backend._count()
        return backend

    def _rows(self, pin_ids: list[str], vectors: np.ndarray, cards: list[dict]) -> list[dict[str, Any]]:
        rows = []
        for pin_id, vector, card in zip(pin_ids, vectors, cards):
            if len(pin_id.encode()) > MAX_ID:
                raise PinIndexError(f"pin_id {pin_id[:40]!r}... is longer than {MAX_ID} bytes")
            title = card.get("title") or None
            rows.append({"pin_id": pin_id, "vector": vector.astype(np.float32).tolist(),
                         "title": title[: MAX_TITLE // 4] if title else None})
        return rows

    def _count(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def __len__(self) -> int:
        return self.count

    def __contains__(self, pin_id: object) -> bool:
        return isinstance(pin_id, str) and bool(self._get([pin_id], ["pin_id"]))

    def _get(self, pin_ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        return list(self.client.get(self.collection, ids=pin_ids, output_fields=fields))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (Q, D)
        k = max(1, min(int(k), max(self.count, 1)))
        params = {"metric_type": "IP", "params": {n: v for n, v in self.meta.params.items() if n == "nprobe"}}
        hits = self.client.search(self.collection, data=vectors.tolist(), limit=k, search_params=params,
                                  output_fields=["title"], consistency_level="Strong")
        if len(self.titles) > TITLE_CACHE:
            self.titles.clear()
        self.titles.update((str(_hit_id(h)), h["entity"].get("title")) for row in hits for h in row)
        scores = np.full((len(vectors), k), np.nan, dtype=np.float32)  # (Q, k)
        ids = []
        for q, row in enumerate(hits):
            scores[q, : len(row)] = [h["distance"] for h in row]
            ids.append([str(_hit_id(h)) for h in row])
        return scores, ids

    def search_by_id(self, pin_id: str, k: int, exclude_self: bool = True) -> tuple[np.ndarray, list[str]]:
        found = self._get([pin_id], ["vector"])
        if not found:
            raise KeyError(pin_id)
        scores, ids = self.search(np.asarray(found[0]["vector"], np.float32)[None, :], k + int(exclude_self))
        keep = [j for j, p in enumerate(ids[0]) if not (exclude_self and p == pin_id)][:k]
        return scores[0][keep], [ids[0][j] for j in keep]

    def put(self, pin_ids: list[str], codes: np.ndarray, cards: list[dict[str, Any]], model_version: str) -> None:
        check_version(self.meta, model_version)
        vectors = dequantize(np.asarray(codes, dtype=np.int8), quant_from_json(self.meta.quant))  # (N, D)
        with self.lock:
            present = {row["pin_id"] for row in self._get(list(pin_ids), ["pin_id"])}
            self.client.upsert(self.collection, self._rows(list(pin_ids), vectors, cards))
            self.titles.clear()
            self.count += len(set(pin_ids) - present)

    def delete(self, pin_ids: list[str]) -> int:
        with self.lock:
            present = [row["pin_id"] for row in self._get(list(dict.fromkeys(pin_ids)), ["pin_id"])]
            if present:
                self.client.delete(self.collection, ids=present)
                self.count -= len(present)
        return len(present)

    def card(self, pin_id: str) -> dict[str, Any] | None:
        if pin_id in self.titles:
            title = self.titles[pin_id]
        else:
            found = self._get([pin_id], ["title"])
            title = found[0].get("title") if found else None
        return {"title": title, "image": None} if title is not None else None

    def close(self) -> None:
        self.client.close()
