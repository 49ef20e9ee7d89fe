"""Batch embedding job: a pins table -> int8 embedding shards, resumable shard by shard.

    pinclip embed --checkpoint runs/demo/train/final --pins pins.parquet --out runs/demo/embeddings

Shaped reader -> mapper -> writer (clip-retrieval style). The reader is `load_pins` (fatal problems
such as duplicate pin_ids stop the job with the file, row and field). Shard i holds loaded pins
[i·shard_size, (i+1)·shard_size) and is written as DIR/shard-0000i.parquet with columns

    pin_id, model_version,
    image_q  int8[D] | null   image-only embedding (null when the pin has no readable image)
    text_q   int8[D] | null   the pin's texts joined and embedded in text-only mode (null when empty)
    pin_q    int8[D]          fused image + text embedding
    image_fp32, text_fp32, pin_fp32   float32[D], only with keep_fp32

and the global scale/zero-point in the parquet schema metadata (key b"pinclip"). DIR/manifest.json
records the model version, quantization params, the input table and, per shard, row counts, sha256,
the fingerprint of what the shard was made from (`input_sha256`: each pin's id and texts, and the
bytes of its image, read from the file), unreadable images and skipped pins with reasons. Each
shard goes to a temp file and is then os.replace'd; the manifest is rewritten the same way after
every shard. A restart keeps a shard only when its file's hash matches the manifest and its input
fingerprint matches the pins it would be made from now, and redoes the rest: an interrupted job
(even kill -9) ends byte-identical to an uninterrupted one, and an edited table row or a changed
image file anywhere redoes exactly the shards they fall in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pinclip.cli import UserError
from pinclip.data.images import ImageError, open_image
from pinclip.data.schema import MAX_IMAGE_PIXELS, TEXT_FIELDS, field_text
from pinclip.quant import GlobalAffine, quant_to_json, quantize

EMBEDDING_FIELDS: tuple[str, ...] = ("image", "text", "pin")
MANIFEST = "manifest.json"
FORMAT = "pinclip-embeddings/1"
MAX_EXAMPLES = 5  # examples of skipped pins / unreadable images kept per shard


class EmbedJobError(UserError):
    """The job cannot run: an output folder holding an incompatible run, or unreadable shards."""


@dataclass
class EmbedJob:
    shard_size: int = 1000
    batch_size: int = 64
    keep_fp32: bool = False
    max_image_pixels: int = MAX_IMAGE_PIXELS
    progress: bool = True


@dataclass
class Manifest:
    model_version: str
    dim: int
    quant: dict[str, Any]  # quant_to_json record
    pins: dict[str, Any]  # path, rows (pins loaded), fingerprint (of the whole file, for the record)
    shard_size: int
    keep_fp32: bool
    load_skipped: dict[str, Any] = field(default_factory=dict)  # pins dropped by load_pins: counts, examples
    shards: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    format: str = FORMAT

    @property
    def rows_out(self) -> int:
        return sum(s["rows"] for s in self.shards)

    @property
    def num_shards(self) -> int:
        return -(-self.pins["rows"] // self.shard_size)

    def settings(self) -> dict[str, Any]:
        """What must match for a restart to reuse any of this run's shards. The pins are checked shard by
        shard (input_sha256), not by table path: a run folder moved with its data still resumes."""
        return {k: getattr(self, k) for k in ("format", "model_version", "dim", "quant", "shard_size", "keep_fp32")}

    def totals(self) -> dict[str, Any]:
        """Counts over the whole run: rows written, pins skipped by reason, unreadable images."""
        at_load = self.load_skipped.get("counts", {})
        skipped: Counter[str] = Counter({"no_image_no_text": at_load.get("pin", 0)})
        for s in self.shards:
            skipped.update(s["skipped"])
        return {
            "rows": self.rows_out,
            "pins_skipped": dict(sorted((k, v) for k, v in skipped.items() if v)),
            "images_unreadable": at_load.get("image", 0) + sum(s["image_unreadable"] for s in self.shards),
        }

    def to_json(self) -> str:
        record = {**asdict(self), "shards": sorted(self.shards, key=lambda s: s["index"])}
        record["totals"] = self.totals()
        return json.dumps(record, indent=1, sort_keys=True) + "\n"

    def save(self, out_dir: Path) -> None:
        atomic_write_bytes(Path(out_dir) / MANIFEST, self.to_json().encode())

    @classmethod
    def read(cls, out_dir: str | Path) -> Manifest:
        path = Path(out_dir) / MANIFEST
        try:
            record = json.loads(path.read_text())
            record.pop("totals", None)
            return cls(**record)
        except (OSError, ValueError, TypeError) as err:
            raise EmbedJobError(f"{path}: not a readable embeddings manifest ({err})") from err


@dataclass
class ShardVectors:
    """The mapper's output for one shard: kept pins' ids and (N, D) float32 embeddings."""

    pin_ids: list[str] = field(default_factory=list)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # field -> (N, D)
    present: dict[str, np.ndarray] = field(default_factory=dict)  # field -> (N,) bool; False = null
    skipped: Counter = field(default_factory=Counter)
    image_unreadable: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def note(self, pin_id: str, reason: str, detail: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"pin_id": pin_id, "reason": reason, "detail": detail[:300]})


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write is retried; ENOSPC then raises)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync it, rename it over `path` (no folder fsync)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_input_sha256(pins: Any, start: int, stop: int) -> str:
    """sha256 of everything shard [start, stop) is made from: ids, texts and image bytes of its pins."""
    digest = hashlib.sha256(f"{start}:{stop}".encode())
    for i in range(start, min(stop, len(pins))):
        texts = {f: pins.texts[f][i] for f in TEXT_FIELDS if f in pins.texts}
        digest.update(json.dumps([pins.pin_ids[i], texts], sort_keys=True, default=str).encode())
        image = pins.images[i]
        if isinstance(image, str):
            try:
                image = Path(image).read_bytes()
            except OSError as err:
                image = f"unreadable: {err.strerror}".encode()
        digest.update(hashlib.sha256(image or b"").digest())
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    """sha256 over the size, first MiB and last MiB of a file: cheap, and changes with any rewrite."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()


def pin_text(fields: dict[str, Any]) -> str:
    """All of a pin's text fields joined, for the text-only embedding (text_q)."""
    return ". ".join(t for t in (field_text(fields.get(f)) for f in TEXT_FIELDS) if t)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


# ---- mapper -------------------------------------------------------------------------------------


def _prepare_batch(pins: Any, positions: range, max_pixels: int, out: ShardVectors) -> list[tuple]:
    """Open images of pins at `positions`: (pin_id, fields, image or None) for each kept pin."""
    kept = []
    for i in positions:
        pin_id = pins.pin_ids[i]
        fields = {f: pins.texts[f][i] for f in TEXT_FIELDS if f in pins.texts}
        image = None
        if pins.images[i] is not None:
            try:
                image = open_image(pins.images[i], max_pixels)
            except ImageError as err:
                out.image_unreadable += 1
                out.note(pin_id, "image_unreadable", err.reason)
        if image is None and not pin_text(fields):
            out.skipped["no_image_no_text"] += 1
            out.note(pin_id, "no_image_no_text", "no readable image and no text")
            continue
        kept.append((pin_id, fields, image))
    return kept


def _embed_batch(embedder: Any, kept: list[tuple]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Image-only, text-only and fused embeddings (N, D) of a batch, with presence masks (N,)."""
    n, dim = len(kept), embedder.dim
    images = [image for _, _, image in kept]
    texts = [pin_text(fields) for _, fields, _ in kept]
    present = {
        "image": np.array([im is not None for im in images], dtype=bool),
        "text": np.array([bool(t) for t in texts], dtype=bool),
        "pin": np.ones(n, dtype=bool),
    }
    vectors = {f: np.zeros((n, dim), dtype=np.float32) for f in EMBEDDING_FIELDS}
    if present["text"].any():
        vectors["text"][present["text"]] = embedder.embed_texts([t for t in texts if t])
    both = embedder.embed_pin_modes([{**fields, "image": image} for _, fields, image in kept])  # one image pass
    vectors["image"][present["image"]] = both["image"][present["image"]]
    vectors["pin"][:] = both["pin"]
    return vectors, present


def embed_shard(embedder: Any, pins: Any, start: int, stop: int, job: EmbedJob) -> ShardVectors:
    """The mapper: pins [start, stop) of a loaded pins table -> their embeddings, a batch at a time."""
    out = ShardVectors()
    parts = []
    for batch_start in range(start, stop, job.batch_size):
        positions = range(batch_start, min(stop, batch_start + job.batch_size))
        kept = _prepare_batch(pins, positions, job.max_image_pixels, out)
        if kept:
            out.pin_ids.extend(pin_id for pin_id, _, _ in kept)
            parts.append(_embed_batch(embedder, kept))
    for f in EMBEDDING_FIELDS:
        out.vectors[f] = np.concatenate([v[f] for v, _ in parts]) if parts else np.zeros((0, embedder.dim), np.float32)
        out.present[f] = np.concatenate([p[f] for _, p in parts]) if parts else np.zeros(0, dtype=bool)
    return out


# ---- writer -------------------------------------------------------------------------------------


def shard_schema(dim: int, keep_fp32: bool, model_version: str, quant: GlobalAffine) -> pa.Schema:
    columns = [pa.field("pin_id", pa.string(), nullable=False), pa.field("model_version", pa.string())]
    columns += [pa.field(f"{f}_q", pa.list_(pa.int8(), dim)) for f in EMBEDDING_FIELDS]
    if keep_fp32:
        columns += [pa.field(f"{f}_fp32", pa.list_(pa.float32(), dim)) for f in EMBEDDING_FIELDS]
    record = {"format": FORMAT, "dim": dim, "quant": quant_to_json(quant, model_version)}
    return pa.schema(columns, metadata={"pinclip": json.dumps(record, sort_keys=True)})


def _vector_column(values: np.ndarray, present: np.ndarray, value_type: pa.DataType, dim: int) -> pa.Array:
    flat = pa.array(values.reshape(-1), type=value_type)  # (N * D,)
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(flat, list_size=dim, mask=mask)


def write_shard(out: ShardVectors, path: Path, model_version: str, quant: GlobalAffine, keep_fp32: bool) -> str:
    """Write one shard atomically and deterministically; returns its sha256."""
    dim = out.vectors["pin"].shape[1]
    schema = shard_schema(dim, keep_fp32, model_version, quant)
    columns: dict[str, pa.Array] = {
        "pin_id": pa.array(out.pin_ids, type=pa.string()),
        "model_version": pa.array([model_version] * len(out.pin_ids), type=pa.string()),
    }
    for f in EMBEDDING_FIELDS:
        vectors = out.vectors[f]  # (N, D)
        codes = quantize(vectors, quant) if len(vectors) else np.zeros((0, dim), np.int8)
        columns[f"{f}_q"] = _vector_column(codes, out.present[f], pa.int8(), dim)
        if keep_fp32:
            columns[f"{f}_fp32"] = _vector_column(vectors, out.present[f], pa.float32(), dim)
    table = pa.Table.from_pydict(columns, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, table.num_rows))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return sha256_file(path)


def shard_entry(index: int, start: int, stop: int, out: ShardVectors, sha256: str, input_sha256: str) -> dict[str, Any]:
    return {
        "index": index,
        "file": shard_name(index),
        "first_pin": start,
        "pins_in": stop - start,
        "rows": len(out.pin_ids),
        "image_rows": int(out.present["image"].sum()),
        "text_rows": int(out.present["text"].sum()),
        "image_unreadable": out.image_unreadable,
        "skipped": dict(sorted(out.skipped.items())),
        "examples": out.examples,
        "sha256": sha256,
        "input_sha256": input_sha256,
    }


def run_shard(embedder: Any, pins: Any, index: int, job: EmbedJob, out_dir: Path, quant: GlobalAffine) -> dict:
    """Reader slice -> mapper -> writer for shard `index`; returns its manifest entry."""
    start = index * job.shard_size
    stop = min(len(pins), start + job.shard_size)
    input_sha256 = shard_input_sha256(pins, start, stop)  # before reading: a file changed meanwhile redoes it
    out = embed_shard(embedder, pins, start, stop, job)
    sha256 = write_shard(out, Path(out_dir) / shard_name(index), embedder.version, quant, job.keep_fp32)
    return shard_entry(index, start, stop, out, sha256, input_sha256)


# ---- the job ------------------------------------------------------------------------------------


def load_pins_for_embedding(pins_path: str | Path, max_image_pixels: int) -> tuple[Any, dict[str, Any]]:
    """The reader: load_pins (fatal problems raise UserError) and what it skipped, for the manifest."""
    from pinclip.data.tables import load_pins

    pins, report = load_pins(str(pins_path), max_image_pixels=max_image_pixels, check_images=False)
    report.raise_if_fatal()
    examples = [str(p) for p in report.problems if not p.fatal][: 2 * MAX_EXAMPLES]
    return pins, {"counts": dict(sorted(report.skipped.items())), "examples": examples}


def new_manifest(embedder: Any, pins: Any, pins_path: str | Path, load_skipped: dict, job: EmbedJob) -> Manifest:
    path = Path(pins_path).resolve()
    return Manifest(
        model_version=str(embedder.version),
        dim=int(embedder.dim),
        quant=quant_to_json(embedder.quant, embedder.version),
        pins={"path": str(path), "rows": len(pins), "fingerprint": file_fingerprint(path)},
        shard_size=job.shard_size,
        keep_fp32=job.keep_fp32,
        load_skipped=load_skipped,
    )


def resume_shards(manifest: Manifest, out_dir: Path, pins: Any) -> list[dict[str, Any]]:
    """Entries of shards already complete in out_dir whose file and inputs are unchanged; removes temp files."""
    for leftover in out_dir.glob(".*.tmp-*"):
        leftover.unlink(missing_ok=True)
    if not (out_dir / MANIFEST).exists():
        return []
    old = Manifest.read(out_dir)
    changed = [k for k, v in manifest.settings().items() if old.settings()[k] != v]
    if changed:
        raise EmbedJobError(
            f"{out_dir} holds embeddings of another run (different {', '.join(changed)}); "
            "use a new --out folder or delete this one"
        )
    keep = []
    for s in old.shards:
        start = s["index"] * manifest.shard_size
        stop = min(len(pins), start + manifest.shard_size)
        if (s["index"] < manifest.num_shards and s.get("input_sha256") == shard_input_sha256(pins, start, stop)
                and (out_dir / s["file"]).is_file() and sha256_file(out_dir / s["file"]) == s["sha256"]):
            keep.append(s)
    return keep


def prepare_run(embedder: Any, pins_path: str | Path, out_dir: str | Path, job: EmbedJob) -> tuple[Any, Manifest, list[int]]:
    """Load the pins, build the manifest (keeping complete shards of an earlier run) and the shards to do."""
    if job.shard_size < 1 or job.batch_size < 1:
        raise UserError(f"shard size and batch size must be >= 1 (got {job.shard_size}, {job.batch_size})")
    if getattr(embedder, "quant", None) is None:
        raise EmbedJobError(f"model {embedder.version} carries no int8 quantization params (scale, zero-point); "
                            "calibrate them at the end of training")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pins, load_skipped = load_pins_for_embedding(pins_path, job.max_image_pixels)
    manifest = new_manifest(embedder, pins, pins_path, load_skipped, job)
    manifest.shards = resume_shards(manifest, out_dir, pins)
    done = {s["index"] for s in manifest.shards}
    return pins, manifest, [i for i in range(manifest.num_shards) if i not in done]


def finish_shard(manifest: Manifest, entry: dict[str, Any], out_dir: Path) -> None:
    manifest.shards = [s for s in manifest.shards if s["index"] != entry["index"]] + [entry]
    manifest.complete = len(manifest.shards) == manifest.num_shards
    manifest.save(out_dir)


def embed_pins_table(
    embedder: Any,
    pins_path: str | Path,
    out_dir: str | Path,
    shard_size: int = 1000,
    keep_fp32: bool = False,
    batch_size: int = 64,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    progress: bool = True,
) -> Manifest:
    """Embed every pin of a pins table into int8 shards under out_dir, resuming an interrupted run."""
    job = EmbedJob(shard_size, batch_size, keep_fp32, max_image_pixels, progress)
    out_dir = Path(out_dir)
    pins, manifest, todo = prepare_run(embedder, pins_path, out_dir, job)
    done_pins = sum(s["pins_in"] for s in manifest.shards)
    with tqdm(total=len(pins), initial=done_pins, unit="pin", desc="embed", disable=not progress or None) as bar:
        for index in todo:
            entry = run_shard(embedder, pins, index, job, out_dir, embedder.quant)
            finish_shard(manifest, entry, out_dir)
            bar.update(entry["pins_in"])
    if not todo:
        manifest.complete = True
        manifest.save(out_dir)
    return manifest

