"""The append-only write log of a FAISS index folder: framed, checksummed records, fsynced before a write is acknowledged.

    log = WriteLog.create(path, header)            # a new, empty log (file and folder entry fsynced)
    ticket = log.append(encode_put(ids, codes, cards))  # written, not yet durable
    log.sync(ticket)                               # durable: one fsync covers every record written so far
    header, ops, good_end = read_log(path)         # replay; a torn tail (kill -9 mid-write) is cut off

A file is MAGIC, one JSON header line, then records `<u32 length><u32 crc32><payload>`. A payload is
a JSON line (op, pin ids, titles, image lengths) followed by the raw int8 codes (N, D) and the image
bytes. Records are written with one os.write each and synced by whichever writer gets to `sync` first
(group commit: writers that arrive while an fsync runs are covered by the next one).

On replay only the *last* record may be bad: a record cut short by the end of the file (or a tail of
zero bytes) is a torn tail, never acknowledged because acknowledgement waits for the fsync that
follows a complete write, and is cut off. Any other bad record, a complete one whose checksum fails
or one with good records after it, is corruption: read_log raises LogCorrupt naming the file and the
offset, and nothing is cut. A failed write or fsync (ENOSPC, EIO) fails every write not yet synced; the next
append first cuts the file back to the last synced record (`heal`), so writes resume once the cause
is gone.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"PINCLIP-LOG/1\n"
FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
MAX_RECORD = 1 << 31
OP_MARK = b'{"op": '  # how every payload begins (encode_op)


@dataclass
class LogOp:
    """One logged write: "put" (add or replace pins) or "delete"."""

    kind: str
    pin_ids: list[str]
    codes: np.ndarray | None = None  # (N, D) int8, puts only
    cards: list[dict[str, Any]] = field(default_factory=list)  # {"title", "image" (bytes or None)} per pin


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_op(op: LogOp) -> bytes:
    images = [card.get("image") or b"" for card in op.cards] if op.kind == "put" else []
    head = {"op": op.kind, "ids": op.pin_ids}
    if op.kind == "put":
        head |= {"dim": int(op.codes.shape[1]), "titles": [c.get("title") for c in op.cards],
                 "image_bytes": [len(b) for b in images]}
    body = [json.dumps(head, ensure_ascii=True).encode() + b"\n"]
    if op.kind == "put":
        body.append(np.ascontiguousarray(op.codes, dtype=np.int8).tobytes())
        body.extend(images)
    return b"".join(body)


def decode_op(payload: bytes) -> LogOp:
    line_end = payload.index(b"\n")
    head = json.loads(payload[:line_end])
    if head["op"] == "delete":
        return LogOp("delete", list(head["ids"]))
    n, dim = len(head["ids"]), int(head["dim"])
    at = line_end + 1
    codes = np.frombuffer(payload[at : at + n * dim], dtype=np.int8).reshape(n, dim)  # (N, D)
    at += n * dim
    cards = []
    for title, size in zip(head["titles"], head["image_bytes"]):
        cards.append({"title": title, "image": bytes(payload[at : at + size]) or None})
        at += size
    return LogOp("put", list(head["ids"]), codes.copy(), cards)


class LogCorrupt(ValueError):
    """A bad record that good records follow: corruption, not a torn tail; nothing is cut."""

    def __init__(self, path: Path, offset: int, why: str) -> None:
        super().__init__(f"{Path(path).name}: corrupt record at byte {offset:,} ({why}) with good records after "
                         "it; see `pinclip index verify` and `pinclip index repair`")
        self.path, self.offset, self.why = Path(path), offset, why


@dataclass
class LogScan:
    """What a full read of a log found: the records, where the good part ends, and the bad stretches."""

    header: dict[str, Any]
    ops: list[LogOp]
    good_end: int  # end of the last good record before the first problem
    size: int
    bad: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, why) skipped byte ranges
    torn_tail: bool = False  # the only problem is a cut-off last record


def _header(path: Path, data: bytes) -> tuple[dict[str, Any], int]:
    if not data.startswith(MAGIC) or b"\n" not in data[len(MAGIC):]:
        raise ValueError(f"{Path(path).name}: not a pinclip write log")
    header_end = data.index(b"\n", len(MAGIC)) + 1
    try:
        return json.loads(data[len(MAGIC) : header_end]), header_end
    except ValueError:
        raise ValueError(f"{Path(path).name}: the log's header is corrupt") from None


def _record_at(data: bytes, at: int) -> tuple[LogOp | None, int, str]:
    """(op, end, "") for a good record at `at`, else (None, declared end, why it is bad)."""
    if at + FRAME.size > len(data):
        return None, len(data), "cut short"
    length, crc = FRAME.unpack_from(data, at)
    end = at + FRAME.size + length
    if end > len(data):
        return None, end, "cut short"
    payload = data[at + FRAME.size : end]
    if zlib.crc32(payload) != crc:
        return None, end, "checksum mismatch"
    try:
        return decode_op(payload), end, ""
    except (ValueError, KeyError, TypeError, IndexError):
        return None, end, "undecodable payload"


def _next_good_record(data: bytes, start: int) -> int:
    """The offset of the next good record at or after `start` (len(data) if none).

    Every payload opens with the JSON `{"op": `, so only the places just before one are tried.
    """
    at = data.find(OP_MARK, start + FRAME.size)
    while at >= 0:
        if _record_at(data, at - FRAME.size)[0] is not None:
            return at - FRAME.size
        at = data.find(OP_MARK, at + 1)
    return len(data)


def scan_log(path: Path, salvage: bool = False) -> LogScan:
    """Read every record; with `salvage`, go on after a bad stretch at the next good record.

    A torn tail is a last record cut short by the end of the file (a kill -9 mid-write) or a tail of
    zero bytes (a size extended before its data reached the disk); any other bad record, the last
    one included, is corruption: a complete record whose checksum fails was not torn by a crash.
    """
    data = Path(path).read_bytes()
    header, at = _header(path, data)
    scan = LogScan(header, [], at, len(data))
    while at < len(data):
        op, end, why = _record_at(data, at)
        if op is not None:
            scan.ops.append(op)
            at = end
            scan.good_end = at if not scan.bad else scan.good_end
            continue
        resume = _next_good_record(data, at + 1)
        scan.torn_tail = resume >= len(data) and not scan.bad and (why == "cut short" or not data[at:].strip(b"\0"))
        scan.bad.append((at, resume, why))
        if not salvage:
            break
        at = resume
    return scan


def read_log(path: Path) -> tuple[dict[str, Any], list[LogOp], int]:
    """The header, the records as ops, and where the good part ends (a torn tail is left out).

    LogCorrupt when a bad record is not the last one: such a log is never cut back silently.
    """
    scan = scan_log(path)
    if scan.bad and not scan.torn_tail:
        start, _, why = scan.bad[0]
        raise LogCorrupt(path, start, why)
    return scan.header, scan.ops, scan.good_end


class WriteLog:
    """An open log file for appending; thread-safe, with group commit.

    `append` returns a ticket (epoch, end offset); `sync(ticket)` returns once that record is on disk,
    or raises when a failed write or fsync took it down. After a failure the next `append` cuts the
    file back to the last synced record and starts a new epoch, so the tickets of the records that
    were cut can never be mistaken for durable ones.
    """

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self.fd = Path(path), fd
        self.written = self.synced = size
        self.write_lock, self.sync_lock = threading.Lock(), threading.Lock()
        self.failed: OSError | None = None
        self.epoch = 0
        self.epoch_ends: list[int] = []  # where each earlier epoch was cut back to (all of it durable)

    @classmethod
    def create(cls, path: Path, header: dict[str, Any]) -> WriteLog:
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            start = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n"
            if os.write(fd, start) != len(start):
                raise OSError(errno.ENOSPC, "short write of the log header")
            os.fsync(fd)
            fsync_dir(path.parent)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, len(start))

    @classmethod
    def open_existing(cls, path: Path, good_end: int) -> WriteLog:
        """Reopen for appending, cutting a torn tail at good_end first."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            if os.fstat(fd).st_size != good_end:
                os.ftruncate(fd, good_end)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(Path(path), fd, good_end)

    def heal(self) -> None:
        """After a failure, cut the file back to the last synced record (nothing to do otherwise)."""
        with self.write_lock, self.sync_lock:
            if self.failed:
                self._heal()

    def _heal(self) -> None:
        """heal() with both locks held; raises if the truncate or its fsync fails too."""
        os.ftruncate(self.fd, self.synced)
        os.fsync(self.fd)
        self.written, self.failed = self.synced, None
        self.epoch_ends.append(self.synced)
        self.epoch += 1

    def append(self, payload: bytes) -> tuple[int, int]:
        """Write one record (not yet durable); returns the ticket its sync waits for."""
        if len(payload) >= MAX_RECORD:
            raise ValueError(f"a log record of {len(payload):,} bytes is too large")
        frame = FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        with self.write_lock, self.sync_lock:
            if self.failed:
                self._heal()
            try:
                written = os.write(self.fd, frame)
            except OSError as err:
                self.failed = err
                raise
            self.written += written
            if written != len(frame):  # a short write leaves a torn record: cut it before the next one
                self.failed = OSError(errno.ENOSPC, "short write to the index's write log")
                raise self.failed
            return self.epoch, self.written

    def sync(self, ticket: tuple[int, int]) -> None:
        """Return once the record of `ticket` is on disk (one fsync may cover many writers)."""
        epoch, upto = ticket
        with self.sync_lock:
            if self.is_durable(ticket):
                return
            if epoch != self.epoch:
                raise OSError(errno.EIO, "the write was cut from the log after a failed write")
            if self.failed:
                raise self.failed
            target = self.written
            try:
                os.fsync(self.fd)
            except OSError as err:  # the page cache state is unknown: what was not synced is cut off
                self.failed = err
                raise
            self.synced = target

    def is_durable(self, ticket: tuple[int, int]) -> bool:
        """The record is on disk (synced before any cut, or in the current epoch and synced)."""
        epoch, end = ticket
        return end <= (self.epoch_ends[epoch] if epoch < self.epoch else self.synced)

    def is_lost(self, ticket: tuple[int, int]) -> bool:
        """The record was cut off, or will be: a failure came before its fsync."""
        epoch, end = ticket
        if epoch < self.epoch:
            return end > self.epoch_ends[epoch]
        return self.failed is not None and end > self.synced

    @property
    def size(self) -> int:
        return self.written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
