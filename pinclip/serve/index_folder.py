"""The files of a durable index folder: manifest, snapshots (checksummed), pin cards, the lock.

    pinclip index verify --index runs/demo/index      # pinclip.serve.index_check reads these

Used by pinclip.serve.faiss_backend (the FaissBackend that writes the folder) and
pinclip.serve.index_check (verify and repair). The layout is described there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pinclip.serve.embed import atomic_write_bytes, sha256_file
from pinclip.serve.index import META_FILE, PinIndex, PinIndexError, parquet_bytes
from pinclip.serve.wal import LogOp, fsync_dir, read_log

FORMAT = "pinclip-index/2"
CARDS_FILE, LOCK_FILE = "cards.parquet", "LOCK"
GENERATION = re.compile(r"^(?:snap|log)-(\d+)")


def snap_name(generation: int) -> str:
    return f"snap-{generation:06d}"


def log_name(generation: int) -> str:
    return f"log-{generation:06d}.wal"


def lock_folder(folder: Path) -> int:
    """An exclusive flock on folder/LOCK, or PinIndexError naming the process that holds it."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise PinIndexError(f"{folder} is open in another process (pid {holder}): stop that server or command "
                            "first, or send writes to it over HTTP") from None
    try:  # the pid is a hint for the message above; a full disk must not fail the open over it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / META_FILE).read_text())
        if not manifest["logs"] or not isinstance(manifest["snapshot"], str):
            raise ValueError("no snapshot or no write log named")
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PinIndexError(f"{folder}: not a pinclip index folder ({err}); build one with `pinclip index build`") from None


def write_snapshot(index: PinIndex, cards: dict[str, dict], folder: Path, name: str) -> dict[str, str]:
    """index + cards to folder/name, written aside (name.tmp) and renamed when complete; returns the
    sha256 of each file by its path in the index folder ("snap-000003/index.faiss")."""
    tmp = folder / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    sums = index.save(tmp)
    live = [p for p in cards if p in index]
    table = pa.table({"pin_id": pa.array(live, pa.string()),
                      "title": pa.array([cards[p].get("title") for p in live], pa.string()),
                      "image": pa.array([cards[p].get("image") for p in live], pa.binary())})
    data = parquet_bytes(table)
    atomic_write_bytes(tmp / CARDS_FILE, data)
    sums[CARDS_FILE] = hashlib.sha256(data).hexdigest()
    fsync_dir(tmp)
    os.replace(tmp, folder / name)
    fsync_dir(folder)
    return {f"{name}/{file}": digest for file, digest in sums.items()}


def check_snapshot(folder: Path, manifest: dict[str, Any]) -> None:
    """PinIndexError unless every snapshot file the manifest has a checksum for is there and matches.

    Manifests written before checksums were kept have none; their snapshots are read unchecked.
    """
    for rel, digest in sorted(manifest.get("checksums", {}).items()):
        path = folder / rel
        if not path.is_file():
            raise PinIndexError(f"{folder}: {rel} is missing; see `pinclip index repair`")
        if sha256_file(path) != digest:
            raise PinIndexError(f"{folder}: {rel} does not match its checksum in index.json (corrupt); "
                                "see `pinclip index verify` and `pinclip index repair`")


def read_cards(snapshot: Path, required: bool = False) -> dict[str, dict]:
    """pin_id -> {"title", "image"} of a snapshot; {} for a snapshot without cards unless `required`."""
    if not (snapshot / CARDS_FILE).is_file() and not required:
        return {}
    try:
        rows = pq.read_table(snapshot / CARDS_FILE).to_pylist()
        return {r["pin_id"]: {"title": r["title"], "image": r["image"]} for r in rows}
    except (OSError, KeyError, pa.ArrowException) as err:
        raise PinIndexError(f"{snapshot / CARDS_FILE}: unreadable pin cards ({err})") from None


def apply_op(index: PinIndex, cards: dict[str, dict], op: LogOp) -> None:
    if op.kind == "put":
        index.put(op.codes, op.pin_ids)
        cards.update(zip(op.pin_ids, op.cards))
    else:
        index.delete(op.pin_ids)
        for pin_id in op.pin_ids:
            cards.pop(pin_id, None)


def load_state(folder: Path, manifest: dict[str, Any]) -> tuple[PinIndex, dict[str, dict], int]:
    """Snapshot (checksums checked) + every log replayed: (index, cards, good end of the last log)."""
    snapshot = folder / manifest["snapshot"]
    check_snapshot(folder, manifest)
    index = PinIndex.load_snapshot(snapshot)
    cards = read_cards(snapshot)  # a cards file the manifest has a checksum for was checked above: it is there
    good_end = 0
    for name in manifest["logs"]:
        try:
            _, ops, good_end = read_log(folder / name)
        except (OSError, ValueError) as err:
            raise PinIndexError(f"{folder}: unreadable write log: {err}") from None
        for op in ops:
            apply_op(index, cards, op)
    return index, cards, good_end


def read_index(folder: str | Path) -> PinIndex:
    """The current index of a folder, read-only (no lock taken; the pin cards are not loaded)."""
    folder = Path(folder)
    return load_state(folder, read_manifest(folder))[0]
