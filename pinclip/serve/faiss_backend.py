"""The durable FAISS index folder: a snapshot plus an append-only write log, replayed on open.

    pinclip index build   --embeddings runs/demo/embed --out runs/demo/index
    pinclip index add     --index runs/demo/index --embeddings runs/new/embed    # through the log
    pinclip index compact --index runs/demo/index
    pinclip serve --index runs/demo/index ...                                    # POST/DELETE /pins

On disk, INDEX/ holds
    index.json        the manifest: which snapshot and which logs make the index (replaced atomically)
    snap-000003/      index.faiss, ids.parquet, index.json (PinIndex.save) and cards.parquet
    log-000003.wal    writes since that snapshot (pinclip.serve.wal), fsynced before acknowledgement
    LOCK              flock'ed by the one process that has the folder open for writing
A write appends one record to the newest log and is applied in memory, then fsynced (group commit)
before `put`/`delete` return. Compaction (`compact`, and automatically once the log passes
`compact_bytes`) rotates to a new log, writes the state as of the rotation to a new snapshot folder
aside, then commits both with one rename of index.json; writes go on meanwhile and are replayed
onto the new snapshot. A kill -9 at any moment leaves the previous manifest or the new one, and
every file it names complete; leftovers are removed the next time the folder is opened.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pinclip.serve.backend import check_version
from pinclip.serve.embed import atomic_write_bytes
from pinclip.serve.index import IDS_FILE, INDEX_FILE, META_FILE, IndexMeta, PinIndex, PinIndexError
from pinclip.serve.wal import LogOp, WriteLog, encode_op, fsync_dir, read_log

FORMAT = "pinclip-index/2"
CARDS_FILE, LOCK_FILE = "cards.parquet", "LOCK"
COMPACT_BYTES = 64 << 20


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
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / META_FILE).read_text())
        if not manifest["logs"] or not isinstance(manifest["snapshot"], str):
            raise ValueError("no snapshot or no write log named")
        return manifest
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PinIndexError(f"{folder}: not a pinclip index folder ({err}); build one with `pinclip index build`") from None


def write_snapshot(index: PinIndex, cards: dict[str, dict], folder: Path, name: str) -> None:
    """index + cards to folder/name, written aside (name.tmp) and renamed when complete."""
    tmp = folder / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    index.save(tmp)
    live = [p for p in cards if p in index]
    table = pa.table({"pin_id": pa.array(live, pa.string()),
                      "title": pa.array([cards[p].get("title") for p in live], pa.string()),
                      "image": pa.array([cards[p].get("image") for p in live], pa.binary())})
    pq.write_table(table, tmp / CARDS_FILE)
    for path in (tmp / CARDS_FILE, tmp):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    os.replace(tmp, folder / name)
    fsync_dir(folder)


def read_cards(snapshot: Path) -> dict[str, dict]:
    if not (snapshot / CARDS_FILE).is_file():
        return {}
    rows = pq.read_table(snapshot / CARDS_FILE).to_pylist()
    return {r["pin_id"]: {"title": r["title"], "image": r["image"]} for r in rows}


def apply_op(index: PinIndex, cards: dict[str, dict], op: LogOp) -> None:
    if op.kind == "put":
        index.put(op.codes, op.pin_ids)
        cards.update(zip(op.pin_ids, op.cards))
    else:
        index.delete(op.pin_ids)
        for pin_id in op.pin_ids:
            cards.pop(pin_id, None)


def load_state(folder: Path, manifest: dict[str, Any]) -> tuple[PinIndex, dict[str, dict], int]:
    """Snapshot + every log replayed: (index, cards, good end of the last log)."""
    snapshot = folder / manifest["snapshot"]
    index, cards = PinIndex.load_snapshot(snapshot), read_cards(snapshot)
    good_end = 0
    for name in manifest["logs"]:
        try:
            _, ops, good_end = read_log(folder / name)
        except (OSError, ValueError) as err:
            raise PinIndexError(f"{folder / name}: unreadable write log ({err})") from None
        for op in ops:
            apply_op(index, cards, op)
    return index, cards, good_end


def read_index(folder: str | Path) -> PinIndex:
    """The current index of a folder, read-only (no lock taken; the pin cards are not loaded)."""
    folder = Path(folder)
    return load_state(folder, read_manifest(folder))[0]


class FaissBackend:
    """A PinIndex kept durable in an index folder (or in memory only, when folder is None)."""

    name = "faiss"

    def __init__(self, index: PinIndex, cards: dict[str, dict] | None = None, folder: Path | None = None,
                 manifest: dict[str, Any] | None = None, log: WriteLog | None = None, lock_fd: int = -1,
                 compact_bytes: int = COMPACT_BYTES) -> None:
        self.index, self.cards, self.folder = index, dict(cards or {}), folder
        self.manifest, self.log, self.lock_fd, self.compact_bytes = manifest or {}, log, lock_fd, compact_bytes
        self.lock = threading.Lock()  # the in-memory index, cards, manifest and current log
        self.compacting = threading.Lock()
        self.pending: list[LogOp] | None = None  # writes made while a compaction runs
        self.compactor: threading.Thread | None = None

    # ---- opening and creating ------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, compact_bytes: int = COMPACT_BYTES) -> FaissBackend:
        """Open an index folder for reading and writing: lock it, replay its logs, tidy leftovers."""
        folder = Path(folder)
        if not (folder / META_FILE).is_file():
            raise PinIndexError(f"{folder}: no index here; build one with `pinclip index build`")
        if (folder / INDEX_FILE).is_file():  # a folder written by an older version: one bare snapshot
            cls.create(folder, PinIndex.load_snapshot(folder))
        lock_fd = lock_folder(folder)
        try:
            manifest = read_manifest(folder)
            index, cards, good_end = load_state(folder, manifest)
            store = cls(index, cards, folder, manifest, None, lock_fd, compact_bytes)
            store.log = WriteLog.open_existing(folder / manifest["logs"][-1], good_end)
            store._remove_leftovers()
            return store
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def create(cls, folder: str | Path, index: PinIndex) -> None:
        """Write `index` as a new index folder (or replace the index in one, atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = lock_folder(folder)
        try:
            old = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
            generation = int(old.get("generation", 0)) + 1
            store = cls(index.compacted() if index.dead else index, {}, folder, old, None, lock_fd)
            write_snapshot(store.index, {}, folder, snap_name(generation))
            store.log = store._new_log(generation)
            store._commit(snap_name(generation), [log_name(generation)], generation)
            store._remove_leftovers()
            store.log.close()
            for name in (INDEX_FILE, IDS_FILE):  # the layout of older versions
                (folder / name).unlink(missing_ok=True)
        finally:
            os.close(lock_fd)

    def _new_log(self, generation: int) -> WriteLog:
        path = self.folder / log_name(generation)
        path.unlink(missing_ok=True)  # an uncommitted leftover of a crash
        return WriteLog.create(path, {"model_version": self.meta.model_version, "dim": self.meta.dim,
                                      "field": self.meta.field})

    def _commit(self, snapshot: str, logs: list[str], generation: int) -> None:
        """Point index.json at a snapshot and logs: one atomic rename, then the folder fsynced."""
        meta = {k: v for k, v in asdict(self.meta).items() if k not in ("size", "sources")}
        self.manifest = {**meta, "format": FORMAT, "snapshot": snapshot, "logs": logs, "generation": generation,
                         "sources": list(self.meta.sources)}
        atomic_write_bytes(self.folder / META_FILE, (json.dumps(self.manifest, indent=1, sort_keys=True) + "\n").encode())
        fsync_dir(self.folder)

    def _remove_leftovers(self) -> None:
        """Snapshots, logs and temp files that the manifest does not name (a crash's or a compaction's)."""
        keep = {self.manifest["snapshot"], *self.manifest["logs"], META_FILE, LOCK_FILE}
        for path in self.folder.iterdir():
            if path.name in keep:
                continue
            if path.name.startswith(("snap-", "log-", f".{META_FILE}.tmp")):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    # ---- reads ---------------------------------------------------------------------------------

    @property
    def meta(self) -> IndexMeta:
        return self.index.meta

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, pin_id: object) -> bool:
        return pin_id in self.index

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, list[list[str]]]:
        with self.lock:
            return self.index.search(vectors, k)

    def search_by_id(self, pin_id: str, k: int, exclude_self: bool = True) -> tuple[np.ndarray, list[str]]:
        with self.lock:
            return self.index.search_by_id(pin_id, k, exclude_self)

    def card(self, pin_id: str) -> dict[str, Any] | None:
        return self.cards.get(pin_id)

    # ---- writes --------------------------------------------------------------------------------

    def put(self, pin_ids: list[str], codes: np.ndarray, cards: list[dict[str, Any]], model_version: str) -> None:
        check_version(self.meta, model_version)
        codes = np.asarray(codes, dtype=np.int8)
        if len(cards) != len(pin_ids):
            raise PinIndexError(f"{len(cards)} cards for {len(pin_ids)} pins")
        self._write(LogOp("put", list(pin_ids), codes, [dict(c) for c in cards]))

    def delete(self, pin_ids: list[str]) -> int:
        with self.lock:
            present = [p for p in dict.fromkeys(pin_ids) if p in self.index]
        if present:
            self._write(LogOp("delete", present))
        return len(present)

    def _write(self, op: LogOp) -> None:
        """Log, apply, then wait for the fsync that makes the write durable."""
        with self.lock:
            if op.kind == "put":  # validate before logging: a logged record must replay
                _check_put(self.index, op)
            log = self.log
            end = log.append(encode_op(op)) if log is not None else 0
            apply_op(self.index, self.cards, op)
            if self.pending is not None:
                self.pending.append(op)
        if log is not None:
            log.sync(end)
            if log.size > self.compact_bytes:
                self.compact_in_background()

    # ---- compaction ----------------------------------------------------------------------------

    def compact(self) -> bool:
        """Fold the logs into a new snapshot; False when there is no folder or one is already running."""
        if self.folder is None or not self.compacting.acquire(blocking=False):
            return False
        try:
            with self.lock:
                generation = int(self.manifest["generation"]) + 1  # never reused, even after a failure
                old_log, old_logs, old_snapshot = self.log, list(self.manifest["logs"]), self.manifest["snapshot"]
                self.log = self._new_log(generation)
                self._commit(old_snapshot, old_logs + [self.log.path.name], generation)
                frozen = PinIndex(_clone(self.index.faiss_index), _copy_meta(self.meta), self.index.pin_ids,
                                  self.index.dead)
                frozen_cards, self.pending = dict(self.cards), []
            old_log.sync(old_log.size)  # writers still waiting on it return at once from now on
            old_log.close()
            frozen = frozen.compacted()
            write_snapshot(frozen, frozen_cards, self.folder, snap_name(generation))
            with self.lock:
                for op in self.pending:
                    apply_op(frozen, frozen_cards, op)
                self._commit(snap_name(generation), [self.log.path.name], generation)
                self.index, self.cards, self.pending = frozen, frozen_cards, None
                self._remove_leftovers()
            return True
        except BaseException:
            self.pending = None
            raise
        finally:
            self.compacting.release()

    def compact_in_background(self) -> None:
        if self.compactor is None or not self.compactor.is_alive():
            self.compactor = threading.Thread(target=self.compact, name="index-compaction", daemon=True)
            self.compactor.start()

    def close(self) -> None:
        if self.compactor is not None:
            self.compactor.join()
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def _check_put(index: PinIndex, op: LogOp) -> None:
    codes = op.codes
    if codes.ndim != 2 or codes.shape != (len(op.pin_ids), index.meta.dim):
        raise PinIndexError(f"codes of shape {codes.shape} for {len(op.pin_ids)} pins of dim {index.meta.dim}")
    if len(set(op.pin_ids)) != len(op.pin_ids):
        raise PinIndexError("a pin_id is repeated within one write")


def _clone(faiss_index: Any) -> Any:
    import faiss

    return faiss.clone_index(faiss_index)


def _copy_meta(meta: IndexMeta) -> IndexMeta:
    return IndexMeta(**{**asdict(meta), "params": dict(meta.params), "sources": list(meta.sources)})
