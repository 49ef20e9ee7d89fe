"""A FAISS index over int8 pin embeddings, with string pin ids and adds of fresh pins without a rebuild.

    pinclip index build --embeddings runs/demo/embeddings --out runs/demo/index
    pinclip index add --index runs/demo/index --embeddings runs/demo/fresh_embeddings

The index stores exactly our int8 codes: a QT_8bit_uniform ScalarQuantizer whose one range is set
from the embeddings' GlobalAffine (pinclip.quant.faiss_sq_index), so FAISS never retrains it and
scores a float query q against the stored x_dq = s·(x_q − z) by inner product <q, x_dq>.
Kinds: "flat" (exact scan of the codes), "hnsw" (graph over the codes), "ivf" (inverted lists
without residuals); "auto" picks flat below 50k vectors and IVF above: at 256 int8 dims HNSW's
graph links (M=32: 256 bytes a vector) double the memory of the codes, where IVF adds ~8%
(bench/results.md, search at scale). HNSW (M=32, efConstruction=80) stays a choice. HNSW's
efSearch and IVF's nprobe are tuned at build time to the smallest value reaching recall@10 >= 0.95
against exact search, both for a sample of stored vectors as queries (self excluded, as for related
pins) and for the same pins' text and image embeddings (off the pin vectors, as text and image searches
are; random directions, a harder stand-in, when the run has no other field).
Ids: FAISS id i is row i of the sidecar ids.parquet (pin_id). Pins are mutable: `put` replaces a
pin_id already present and `delete` removes one; both tombstone the old row, which searches skip
(an id selector) until `compacted()`. `load_embeddings` reads one field's codes back from the
shards of a finished `pinclip embed` run.

A snapshot folder holds index.faiss, ids.parquet and index.json (kind, parameters, dim, field,
model version, quantization params, size, sources). The durable index folder that the server and
`pinclip index` use (snapshots + write log + lock) is pinclip.serve.faiss_backend.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinclip.cli import UserError
from pinclip.quant import GlobalAffine, dequantize, faiss_sq_index, quant_from_json, quant_to_json, quantize
from pinclip.serve.ann_tuning import exact_top_k, recall_at_k, set_search_param, tune_search
from pinclip.serve.embed import EMBEDDING_FIELDS, EmbedJobError, Manifest, atomic_write_bytes, sha256_file

__all__ = ["PinIndex", "PinIndexError", "IndexConfig", "IndexMeta", "load_embeddings", "exact_top_k", "recall_at_k"]

INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.parquet", "index.json"
FORMAT = "pinclip-index/1"
KINDS = ("auto", "flat", "hnsw", "ivf")



@dataclass
class EmbeddingSet:
    """One field's int8 codes from a finished embedding run, in shard order."""

    pin_ids: list[str]
    codes: np.ndarray  # (N, D) int8
    model_version: str
    quant: GlobalAffine
    source: str  # the embeddings folder
    missing: int = 0  # rows whose field is null (no image / no text), left out

    @property
    def dim(self) -> int:
        return int(self.codes.shape[1])


def _field_codes(table: pa.Table, column: str, dim: int) -> tuple[list[str], np.ndarray, int]:
    values = table.column(column).combine_chunks()
    valid = values.is_valid().to_numpy(zero_copy_only=False)  # (N,) bool
    pin_ids = [p for p, ok in zip(table.column("pin_id").to_pylist(), valid) if ok]
    codes = values.filter(values.is_valid()).flatten().to_numpy().reshape(-1, dim)  # (N_valid, D)
    return pin_ids, codes.astype(np.int8), int((~valid).sum())


def load_embeddings(out_dir: str | Path, field: str = "pin") -> EmbeddingSet:
    """The `field` codes ("image", "text" or "pin") of a complete run; shards are hash-checked."""
    if field not in EMBEDDING_FIELDS:
        raise UserError(f"unknown embedding field {field!r}; use one of {', '.join(EMBEDDING_FIELDS)}")
    out_dir = Path(out_dir)
    manifest = Manifest.read(out_dir)
    if not manifest.complete:
        raise EmbedJobError(f"{out_dir}: the embedding job is unfinished ({len(manifest.shards)} of "
                            f"{manifest.num_shards} shards); run `pinclip embed` again to finish it")
    pin_ids, parts, missing = [], [np.zeros((0, manifest.dim), np.int8)], 0
    for shard in sorted(manifest.shards, key=lambda s: s["index"]):
        path = out_dir / shard["file"]
        if not path.is_file() or sha256_file(path) != shard["sha256"]:
            raise EmbedJobError(f"{path}: missing or changed since the manifest was written; rerun `pinclip embed`")
        ids, codes, n_missing = _field_codes(pq.read_table(path), f"{field}_q", manifest.dim)
        pin_ids += ids
        parts.append(codes)
        missing += n_missing
    return EmbeddingSet(pin_ids, np.concatenate(parts), manifest.model_version,
                        quant_from_json(manifest.quant), str(out_dir.resolve()), missing)


def off_field_queries(embeddings_dir: str | Path, field: str, size: int, config: IndexConfig | None = None
                      ) -> np.ndarray | None:
    """The run's other fields' vectors (for a pin index: the same pins' text and image embeddings, what a
    text or image search sends), dequantized, to tune the index's search parameters on; None for an index
    that needs no tuning (flat) or when the run holds no other field."""
    config = config or IndexConfig()
    if choose_kind(size, config) == "flat":
        return None
    parts = []
    for other in (f for f in EMBEDDING_FIELDS if f != field):
        try:
            emb = load_embeddings(embeddings_dir, other)
        except (UserError, KeyError, ValueError):  # a run without that field: tune on the others
            continue
        if len(emb.codes):
            parts.append(dequantize(emb.codes, emb.quant))
    return np.concatenate(parts) if parts else None


class PinIndexError(UserError):
    """An index operation refused: mixed model versions or quantization, duplicate ids, bad files."""


@dataclass
class IndexConfig:
    kind: str = "auto"  # auto | flat | hnsw | ivf
    hnsw_m: int = 32
    ef_construction: int = 80
    target_recall: float = 0.95  # recall@10 vs exact that efSearch / nprobe are tuned for
    flat_max: int = 50_000  # auto: exact scan below this many vectors, IVF from there
    tune_queries: int = 200
    seed: int = 0


@dataclass
class IndexMeta:
    kind: str
    dim: int
    field: str  # which embedding is indexed: "pin", "image" or "text"
    model_version: str
    quant: dict[str, Any]  # quant_to_json record
    params: dict[str, Any] = field(default_factory=dict)  # hnsw_m, ef_search, nlist, nprobe, tuned recall
    size: int = 0
    sources: list[str] = field(default_factory=list)  # embeddings folders, in the order added
    format: str = FORMAT


def choose_kind(n: int, config: IndexConfig) -> str:
    if config.kind not in KINDS:
        raise PinIndexError(f"unknown index kind {config.kind!r}; use one of {', '.join(KINDS)}")
    if config.kind != "auto":
        return config.kind
    return "flat" if n < config.flat_max else "ivf"


def _new_faiss_index(kind: str, quant: GlobalAffine, vectors: np.ndarray, config: IndexConfig) -> tuple[Any, dict]:
    """An empty FAISS SQ index of `kind` with the global range set, and its construction params."""
    dim = vectors.shape[1]
    if kind == "hnsw":
        index = faiss_sq_index(quant, dim, "hnsw", hnsw_m=config.hnsw_m)
        index.hnsw.efConstruction = config.ef_construction
        return index, {"hnsw_m": config.hnsw_m, "ef_construction": config.ef_construction}
    if kind == "ivf":
        nlist = int(max(1, min(65536, 4 * np.sqrt(len(vectors)), len(vectors) // 39)))  # >= 39 points a list
        rng = np.random.default_rng(config.seed)
        sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 64 * nlist), replace=False)]
        index = faiss_sq_index(quant, dim, "ivf", nlist=nlist, train_vectors=sample)
        return index, {"nlist": int(index.nlist)}
    return faiss_sq_index(quant, dim, "flat"), {}


class PinIndex:
    """FAISS SQ index + pin_id sidecar: build, put (add or replace), delete, search, save and load.

    FAISS row i holds pin_ids[i]. Replacing or deleting a pin tombstones its row (`dead`): searches
    skip dead rows through an id selector, and `compacted()` returns a copy without them.
    """

    def __init__(self, faiss_index: Any, meta: IndexMeta, pin_ids: list[str], dead: set[int] | None = None) -> None:
        self.faiss_index, self.meta, self.pin_ids = faiss_index, meta, list(pin_ids)
        self.dead: set[int] = set(dead or ())
        self.row_of = {pin_id: i for i, pin_id in enumerate(self.pin_ids) if i not in self.dead}
        self._search_params: Any = None  # rebuilt when `dead` changes
        if meta.kind == "ivf":
            faiss_index.make_direct_map()  # for reconstruct (search by pin id)

    def __len__(self) -> int:
        return len(self.row_of)

    def __contains__(self, pin_id: object) -> bool:
        return pin_id in self.row_of

    @property
    def quant(self) -> GlobalAffine:
        return quant_from_json(self.meta.quant)

    @classmethod
    def build(cls, codes: np.ndarray, pin_ids: list[str], quant: GlobalAffine, model_version: str,
              field: str = "pin", config: IndexConfig | None = None, sources: tuple[str, ...] = (),
              tune_queries: np.ndarray | None = None) -> PinIndex:
        """An index over int8 codes (N, D) whose kind and search parameters follow `config`; `tune_queries`
        (Q, D): the off-index queries the search parameters are tuned on (pinclip.serve.ann_tuning)."""
        config = config or IndexConfig()
        codes = np.asarray(codes, dtype=np.int8)
        if codes.ndim != 2 or len(codes) == 0:
            raise PinIndexError(f"nothing to index: codes have shape {codes.shape}")
        kind = choose_kind(len(codes), config)
        vectors = dequantize(codes, quant)  # (N, D), exactly what the SQ codes decode to
        faiss_index, params = _new_faiss_index(kind, quant, vectors, config)
        meta = IndexMeta(kind, codes.shape[1], field, str(model_version), quant_to_json(quant, model_version),
                         params, sources=list(sources))
        index = cls(faiss_index, meta, [])
        index.put(codes, list(pin_ids), replace=False)
        index.meta.params.update(tune_search(faiss_index, kind, vectors, config, queries=tune_queries))
        return index

    @classmethod
    def from_embeddings(cls, embeddings_dir: str | Path, field: str = "pin", config: IndexConfig | None = None) -> PinIndex:
        emb = load_embeddings(embeddings_dir, field)
        return cls.build(emb.codes, emb.pin_ids, emb.quant, emb.model_version, field, config, (emb.source,),
                         off_field_queries(embeddings_dir, field, len(emb.codes), config))

    def check_compatible(self, model_version: str, quant: GlobalAffine, dim: int) -> None:
        """PinIndexError unless vectors of this model version, quantization and dim belong here."""
        if str(model_version) != self.meta.model_version:
            raise PinIndexError(f"the index holds embeddings of model {self.meta.model_version}, "
                                f"these are from model {model_version}; rebuild the index instead of mixing")
        if (quant.scale, quant.zero_point) != (self.quant.scale, self.quant.zero_point):
            raise PinIndexError(f"quantization params differ (index: {self.meta.quant}, new: {quant.to_dict()})")
        if dim != self.meta.dim:
            raise PinIndexError(f"the index holds {self.meta.dim}-d vectors, these are {dim}-d")

    def put(self, codes: np.ndarray, pin_ids: list[str], replace: bool = True) -> int:
        """Add int8 codes (N, D); a pin_id already present is replaced (refused when replace=False)."""
        codes = np.asarray(codes, dtype=np.int8)
        if len(pin_ids) != len(codes) or codes.ndim != 2 or codes.shape[1] != self.meta.dim:
            raise PinIndexError(f"{len(pin_ids)} pin ids for codes of shape {codes.shape} (dim {self.meta.dim})")
        dupes = _duplicates(pin_ids, {} if replace else self.row_of)
        if dupes:
            raise PinIndexError(f"{len(dupes)} pin_id(s) already in the index or repeated: {', '.join(dupes[:5])}")
        self.delete([p for p in pin_ids if p in self.row_of])
        self.faiss_index.add(dequantize(codes, self.quant))  # re-encodes to exactly these codes
        for pin_id in pin_ids:
            self.row_of[pin_id] = len(self.pin_ids)
            self.pin_ids.append(pin_id)
        self.meta.size = len(self.row_of)
        return len(pin_ids)

    def delete(self, pin_ids: list[str]) -> int:
        """Tombstone the rows of these pins (unknown ids are ignored); returns how many were live."""
        rows = [self.row_of.pop(p) for p in dict.fromkeys(pin_ids) if p in self.row_of]
        if rows:
            self.dead.update(rows)
            self._search_params = None
            self.meta.size = len(self.row_of)
        return len(rows)

    def add_codes(self, codes: np.ndarray, pin_ids: list[str], model_version: str, quant: GlobalAffine) -> int:
        """Add (or replace) int8 codes (N, D) of pins without a rebuild; returns how many were written."""
        codes = np.asarray(codes, dtype=np.int8)
        self.check_compatible(model_version, quant, codes.shape[1])
        return self.put(codes, list(pin_ids))

    def add_vectors(self, vectors: np.ndarray, pin_ids: list[str]) -> int:
        """Add float embeddings (N, D) of new pins (from this index's model), quantized first."""
        return self.put(quantize(vectors, self.quant), list(pin_ids))

    def codes_of(self, pin_ids: list[str]) -> np.ndarray:
        """The stored int8 codes (N, D) of live pins."""
        rows = [self.row_of[p] for p in pin_ids]
        return quantize(np.stack([self.faiss_index.reconstruct(r) for r in rows]), self.quant) if rows \
            else np.zeros((0, self.meta.dim), np.int8)

    def _params(self) -> Any:
        """FAISS search parameters that skip dead rows (None when there are none)."""
        if not self.dead:
            return None
        if self._search_params is None:
            import faiss

            batch = faiss.IDSelectorBatch(np.fromiter(self.dead, dtype=np.int64, count=len(self.dead)))
            selector = faiss.IDSelectorNot(batch)
            if self.meta.kind == "ivf":
                params = faiss.SearchParametersIVF(sel=selector, nprobe=self.faiss_index.nprobe)
            elif self.meta.kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.faiss_index.hnsw.efSearch)
            else:
                params = faiss.SearchParameters(sel=selector)
            params.keep = (batch, selector)  # the SWIG objects must outlive the search
            self._search_params = params
        return self._search_params

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-k by <q, x_dq> for float queries (Q, D): scores (Q, k) and pin ids per query.

        A query may get fewer than k ids (small index, or IVF lists too short); its trailing
        scores are then NaN.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.meta.dim:
            raise ValueError(f"queries must be (Q, {self.meta.dim}), got {vectors.shape}")
        k = max(1, min(int(k), len(self)))
        scores, ids = self.faiss_index.search(vectors, k, params=self._params())  # (Q, k), (Q, k)
        scores[ids < 0] = np.nan
        return scores, [[self.pin_ids[i] for i in row if i >= 0] for row in ids.tolist()]

    def vector(self, pin_id: str) -> np.ndarray:
        """The stored (dequantized) vector (D,) of a pin; KeyError if it is not in the index."""
        return self.faiss_index.reconstruct(self.row_of[pin_id])

    def search_by_id(self, pin_id: str, k: int, exclude_self: bool = True) -> tuple[np.ndarray, list[str]]:
        """Nearest pins (k,) to a stored pin, the pin itself left out unless exclude_self is False."""
        scores, ids = self.search(self.vector(pin_id)[None, :], k + int(exclude_self))
        keep = [j for j, p in enumerate(ids[0]) if not (exclude_self and p == pin_id)][:k]
        return scores[0][keep], [ids[0][j] for j in keep]

    def compacted(self) -> PinIndex:
        """A copy holding only the live rows, in row order (same kind, parameters and IVF lists)."""
        import faiss

        live = sorted(self.row_of.values())
        meta = IndexMeta(**{**asdict(self.meta), "params": dict(self.meta.params), "sources": list(self.meta.sources)})
        if self.meta.kind == "hnsw":
            fresh = faiss_sq_index(self.quant, self.meta.dim, "hnsw", hnsw_m=self.meta.params.get("hnsw_m", 32))
            fresh.hnsw.efConstruction = self.meta.params.get("ef_construction", 80)
        else:
            fresh = faiss.clone_index(self.faiss_index)  # keeps IVF's trained lists and the SQ range
            fresh.reset()
        if live:
            fresh.add(np.stack([self.faiss_index.reconstruct(r) for r in live]))
        for name in ("ef_search", "nprobe"):
            if name in meta.params:
                set_search_param(fresh, meta.kind, meta.params[name])
        meta.size = len(live)
        return PinIndex(fresh, meta, [self.pin_ids[r] for r in live])

    def save(self, path: str | Path) -> dict[str, str]:
        """Write index.faiss, ids.parquet and index.json (live rows only) to a folder, each atomically;
        returns the sha256 of each file written."""
        import faiss

        index = self.compacted() if self.dead else self
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        files = {INDEX_FILE: faiss.serialize_index(index.faiss_index).tobytes(),
                 IDS_FILE: parquet_bytes(pa.table({"pin_id": pa.array(index.pin_ids, type=pa.string())})),
                 META_FILE: (json.dumps(asdict(index.meta), indent=1, sort_keys=True) + "\n").encode()}
        for name, data in files.items():
            atomic_write_bytes(path / name, data)
        return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}

    @classmethod
    def load(cls, path: str | Path) -> PinIndex:
        """The index in a folder: a snapshot folder, or an index folder with its write log replayed."""
        path = Path(path)
        if _is_store(path):
            from pinclip.serve.faiss_backend import read_index

            return read_index(path)
        return cls.load_snapshot(path)

    @classmethod
    def load_snapshot(cls, path: str | Path) -> PinIndex:
        import faiss

        path = Path(path)
        try:
            meta = IndexMeta(**json.loads((path / META_FILE).read_text()))
            pin_ids = pq.read_table(path / IDS_FILE).column("pin_id").to_pylist()
            faiss_index = faiss.deserialize_index(np.fromfile(path / INDEX_FILE, dtype=np.uint8))
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, pa.ArrowException) as err:
            raise PinIndexError(f"{path}: not a readable pinclip index ({err})") from None
        if not (meta.size == len(pin_ids) == faiss_index.ntotal):
            raise PinIndexError(f"{path}: inconsistent index (index.json says {meta.size} pins, ids.parquet has "
                                f"{len(pin_ids)}, index.faiss has {faiss_index.ntotal}); rebuild it")
        for name in ("ef_search", "nprobe"):
            if name in meta.params:
                set_search_param(faiss_index, meta.kind, meta.params[name])
        return cls(faiss_index, meta, pin_ids)


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet file bytes (written to disk by the caller, through os.write)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _is_store(path: Path) -> bool:
    """True for an index folder with snapshots and a write log (pinclip.serve.faiss_backend)."""
    try:
        return "snapshot" in json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False


def _duplicates(pin_ids: list[str], existing: dict[str, int]) -> list[str]:
    """Ids repeated within pin_ids or already in `existing`, sorted."""
    seen: set[str] = set()
    dupes = set()
    for p in pin_ids:
        if p in seen or p in existing:
            dupes.add(p)
        seen.add(p)
    return sorted(dupes)
