"""The append-only write log of a FAISS index folder: framed, checksummed records, fsynced before a write is acknowledged.

    log = WriteLog.create(path, header)            # a new, empty log (file and folder entry fsynced)
    end = log.append(encode_put(ids, codes, cards))  # written, not yet durable
    log.sync(end)                                  # durable: one fsync covers every record written so far
    header, ops, good_end = read_log(path)         # replay; a torn tail (kill -9 mid-write) is cut off

A file is MAGIC, one JSON header line, then records `<u32 length><u32 crc32><payload>`. A payload is
a JSON line (op, pin ids, titles, image lengths) followed by the raw int8 codes (N, D) and the image
bytes. Records are written with one os.write each and synced by whichever writer gets to `sync` first
(group commit: writers that arrive while an fsync runs are covered by the next one). On replay the
first record whose frame is incomplete or whose checksum fails ends the log: such a record was never
acknowledged, because acknowledgement waits for the fsync that follows a complete write.
"""

from __future__ import annotations

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


def read_log(path: Path) -> tuple[dict[str, Any], list[LogOp], int]:
    """The header, the complete records as ops, and the byte offset where the good part ends."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC) or b"\n" not in data[len(MAGIC):]:
        raise ValueError(f"{path}: not a pinclip write log")
    header_end = data.index(b"\n", len(MAGIC)) + 1
    header = json.loads(data[len(MAGIC) : header_end])
    ops, at = [], header_end
    while at + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, at)
        payload = data[at + FRAME.size : at + FRAME.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break  # a torn or never-synced tail
        try:
            ops.append(decode_op(payload))
        except (ValueError, KeyError, TypeError):
            break
        at += FRAME.size + length
    return header, ops, at


class WriteLog:
    """An open log file for appending; thread-safe, with group commit."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self.fd = Path(path), fd
        self.written = self.synced = size
        self.write_lock, self.sync_lock = threading.Lock(), threading.Lock()
        self.failed: OSError | None = None

    @classmethod
    def create(cls, path: Path, header: dict[str, Any]) -> WriteLog:
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        start = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n"
        os.write(fd, start)
        os.fsync(fd)
        fsync_dir(path.parent)
        return cls(path, fd, len(start))

    @classmethod
    def open_existing(cls, path: Path, good_end: int) -> WriteLog:
        """Reopen for appending, cutting a torn tail at good_end first."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        if os.fstat(fd).st_size != good_end:
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        return cls(Path(path), fd, good_end)

    def append(self, payload: bytes) -> int:
        """Write one record (not yet durable); returns the offset its sync must reach."""
        if len(payload) >= MAX_RECORD:
            raise ValueError(f"a log record of {len(payload):,} bytes is too large")
        frame = FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        with self.write_lock:
            if self.failed:
                raise self.failed
            written = os.write(self.fd, frame)
            if written != len(frame):  # a short write leaves a torn record: nothing more may follow it
                self.failed = OSError(f"short write to {self.path}")
                raise self.failed
            self.written += written
            return self.written

    def sync(self, upto: int) -> None:
        """Return once every byte up to `upto` is on disk (one fsync may cover many writers)."""
        with self.sync_lock:
            if self.synced >= upto:
                return
            if self.failed:
                raise self.failed
            target = self.written
            try:
                os.fsync(self.fd)
            except OSError as err:  # after a failed fsync the page cache state is unknown: stop writing
                self.failed = err
                raise
            self.synced = target

    @property
    def size(self) -> int:
        return self.written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
