"""The durable FAISS index folder: a snapshot plus an append-only write log, replayed on open.

    pinclip index build   --embeddings runs/demo/embed --out runs/demo/index
    pinclip index add     --index runs/demo/index --embeddings runs/new/embed    # through the log
    pinclip index compact --index runs/demo/index
    pinclip serve --index runs/demo/index ...                                    # POST/DELETE /pins

On disk, INDEX/ holds
    index.json        the manifest: which snapshot and which logs make the index, and the sha256 of
                      every snapshot file (replaced atomically; pinclip.serve.index_folder)
    snap-000003/      index.faiss, ids.parquet, index.json (PinIndex.save) and cards.parquet
    log-000003.wal    writes since that snapshot (pinclip.serve.wal), fsynced before acknowledgement
    LOCK              flock'ed by the one process that has the folder open for writing
A write appends one record to the newest log, waits for the fsync that covers it (group commit),
and only then is applied in memory, in log order, before `put`/`delete` return: searches never see
a write that a failed fsync may have lost. A failed write or fsync (ENOSPC, EIO) fails that write
and the others not yet synced; the log is cut back to its last synced record before the next write,
so writes resume once space is free. Compaction (`compact`, and automatically once the log passes
`compact_bytes`) syncs the log, creates a new one and commits a manifest naming the old logs and the
new one *before* writing to the new log; it then writes the state as of the rotation to a new
snapshot folder aside and commits it with one rename of index.json. Nothing a manifest might name
is deleted until a manifest that does not name it is durable. The manifest holds the sha256 of
every snapshot file, checked when the folder is opened (and by `pinclip index verify`). A kill -9,
a full disk or an I/O error at any write, fsync, rename or truncate leaves the previous manifest or
the new one, with every file it names complete (tests/test_serve_crash_points.py enumerates them);
leftovers are removed the next time the folder is opened.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pinclip.serve.backend import check_version
from pinclip.serve.embed import atomic_write_bytes
from pinclip.serve.index import IDS_FILE, INDEX_FILE, META_FILE, IndexMeta, PinIndex, PinIndexError
from pinclip.serve.index_folder import (
    FORMAT,
    GENERATION,
    LOCK_FILE,
    apply_op,
    load_state,
    lock_folder,
    log_name,
    read_index,
    read_manifest,
    snap_name,
    write_snapshot,
)
from pinclip.serve.wal import LogOp, WriteLog, encode_op, fsync_dir

__all__ = ["FaissBackend", "read_index"]
COMPACT_BYTES = 64 << 20


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
        self.pending: list[LogOp] | None = None  # writes applied while a compaction runs
        self.unapplied: list[tuple[WriteLog, tuple[int, int], LogOp]] = []  # logged, waiting for their fsync
        self.compactor: threading.Thread | None = None
        self.generation = 0  # the highest one used or seen (_next_generation)

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
    def create(cls, folder: str | Path, index: PinIndex, cards: dict[str, dict] | None = None) -> None:
        """Write `index` (and its pin cards) as a new index folder, or replace the index in one atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = lock_folder(folder)
        try:
            store = cls(index, cards, folder)  # index.save writes only the live rows
            generation = store._next_generation()  # above every snap-/log- name here: an old index is replaced
            sums = write_snapshot(store.index, store.cards, folder, snap_name(generation))
            store.log = store._new_log(generation)
            store._commit(snap_name(generation), [log_name(generation)], generation, sums)
            store._remove_leftovers()
            store.log.close()
            for name in (INDEX_FILE, IDS_FILE):  # the layout of older versions
                (folder / name).unlink(missing_ok=True)
        finally:
            os.close(lock_fd)

    def _next_generation(self) -> int:
        """A generation above every snap-/log- name in the folder (the manifest names some of them) and
        every one this process tried: never reused, even after a failed compaction."""
        on_disk = [int(m.group(1)) for p in self.folder.iterdir() if (m := GENERATION.match(p.name))]
        self.generation = max([self.generation, *on_disk]) + 1
        return self.generation

    def _new_log(self, generation: int) -> WriteLog:
        return WriteLog.create(self.folder / log_name(generation), {
            "model_version": self.meta.model_version, "dim": self.meta.dim, "field": self.meta.field})

    def _commit(self, snapshot: str, logs: list[str], generation: int, checksums: dict[str, str]) -> None:
        """Point index.json at a snapshot and logs: one atomic rename, then the folder fsynced.

        self.manifest changes only once the new manifest is durable; when this raises, the manifest on
        disk may be the old one or the new one, so the caller keeps every file that either names.
        """
        meta = {k: v for k, v in asdict(self.meta).items() if k not in ("size", "sources")}
        manifest = {**meta, "format": FORMAT, "snapshot": snapshot, "logs": logs, "generation": generation,
                    "sources": list(self.meta.sources), "checksums": checksums}
        atomic_write_bytes(self.folder / META_FILE, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        fsync_dir(self.folder)
        self.manifest = manifest

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

    def log_bytes(self) -> int:
        """Bytes in the write logs the manifest names (0 for an index held in memory only)."""
        if self.folder is None:
            return 0
        return sum((self.folder / name).stat().st_size for name in self.manifest.get("logs", [])
                   if (self.folder / name).is_file())

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
        """Log, wait for the fsync that makes the write durable, then apply it (in log order)."""
        with self.lock:
            if op.kind == "put":  # validate before logging: a logged record must replay
                _check_put(self.index, op)
            log = self.log
            if log is None:
                self._apply(op)
                return
            ticket = log.append(encode_op(op))  # an OSError here: nothing was logged or applied
            self.unapplied.append((log, ticket, op))
        try:
            log.sync(ticket)
        finally:
            with self.lock:
                self._apply_synced()
        if log.size > self.compact_bytes:
            self.compact_in_background()

    def _apply(self, op: LogOp) -> None:
        apply_op(self.index, self.cards, op)
        if self.pending is not None:
            self.pending.append(op)

    def _apply_synced(self) -> None:
        """Apply the logged writes that are durable now, in log order; drop those a failure cut off."""
        while self.unapplied:
            log, ticket, op = self.unapplied[0]
            if log.is_durable(ticket):
                self._apply(op)
            elif not log.is_lost(ticket):
                return
            self.unapplied.pop(0)

    # ---- compaction ----------------------------------------------------------------------------

    def compact(self) -> bool:
        """Fold the logs into a new snapshot; False when there is no folder or one is already running."""
        if self.folder is None or not self.compacting.acquire(blocking=False):
            return False
        try:
            with self.lock:
                self._rotate()
                frozen = PinIndex(_clone(self.index.faiss_index), _copy_meta(self.meta), self.index.pin_ids,
                                  self.index.dead)
                frozen_cards, self.pending, generation = dict(self.cards), [], self.generation
            frozen = frozen.compacted()
            sums = write_snapshot(frozen, frozen_cards, self.folder, snap_name(generation))
            with self.lock:
                for op in self.pending:
                    apply_op(frozen, frozen_cards, op)
                self._commit(snap_name(generation), [self.log.path.name], generation, sums)
                self.index, self.cards, self.pending = frozen, frozen_cards, None
                self._remove_leftovers()
            return True
        except BaseException:
            self.pending = None
            raise
        finally:
            self.compacting.release()

    def _rotate(self) -> None:
        """Under self.lock: sync and apply every write of the current log, then commit a manifest naming a
        new log beside the old ones, and only then switch writes to it."""
        old = self.log
        old.heal()  # a failed write's bytes are cut first
        old.sync((old.epoch, old.written))
        self._apply_synced()
        generation = self._next_generation()
        new = self._new_log(generation)
        try:
            self._commit(self.manifest["snapshot"], [*self.manifest["logs"], new.path.name], generation,
                         self.manifest.get("checksums", {}))
        except BaseException:  # writes go on in the old log, which both manifests name
            new.close()
            raise
        self.log = new
        old.close()

    def compact_in_background(self) -> None:
        if self.compactor is None or not self.compactor.is_alive():
            self.compactor = threading.Thread(target=self._compact_quietly, name="index-compaction", daemon=True)
            self.compactor.start()

    def _compact_quietly(self) -> None:
        """compact() for the background thread: a failure (a full disk) is one line on stderr; the next write
        past compact_bytes tries again."""
        try:
            self.compact()
        except (OSError, PinIndexError) as err:
            print(f"pinclip: compaction of the index failed, writes go on in the log ({_reason(err)})",
                  file=sys.stderr)

    def close(self) -> None:
        if self.compactor is not None:
            self.compactor.join()
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def _reason(err: BaseException) -> str:
    """An error in a few words, without file paths: 'No space left on device'."""
    if isinstance(err, OSError) and err.errno:
        return os.strerror(err.errno)
    return type(err).__name__


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
