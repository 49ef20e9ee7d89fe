"""The write log: torn tails are cut, corruption before the tail is refused, writes resume after a failure."""

from __future__ import annotations

import errno
import os
import zlib

import numpy as np
import pytest

import pinclip.serve.wal as wal
from pinclip.serve.wal import (
    FRAME,
    MAGIC,
    LogCorrupt,
    LogOp,
    WriteLog,
    decode_op,
    encode_op,
    read_log,
    scan_log,
)


def put(i: int) -> bytes:
    return encode_op(LogOp("put", [f"p{i}"], np.full((1, 4), i, np.int8), [{"title": f"t{i}", "image": None}]))


@pytest.fixture
def log_of_five(tmp_path):
    """A log of five put records; returns (path, the offset where each record starts)."""
    log = WriteLog.create(tmp_path / "log.wal", {"dim": 4})
    starts = []
    for i in range(5):
        starts.append(log.size)
        log.sync(log.append(put(i)))
    log.close()
    return tmp_path / "log.wal", starts


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_records_round_trip(log_of_five):
    path, _ = log_of_five
    header, ops, end = read_log(path)
    assert header == {"dim": 4} and end == path.stat().st_size
    assert [op.pin_ids for op in ops] == [[f"p{i}"] for i in range(5)]
    assert ops[3].codes.tolist() == [[3, 3, 3, 3]] and ops[3].cards == [{"title": "t3", "image": None}]


def test_a_record_cut_short_at_the_end_is_a_torn_tail(log_of_five):
    path, starts = log_of_five
    os.truncate(path, path.stat().st_size - 3)
    _, ops, end = read_log(path)
    assert len(ops) == 4 and end == starts[4]
    scan = scan_log(path)
    assert scan.torn_tail and scan.bad == [(starts[4], path.stat().st_size, "cut short")]


def test_a_zero_filled_tail_is_a_torn_tail(log_of_five):
    path, _ = log_of_five
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\0" * 64)
    assert len(read_log(path)[1]) == 5 and read_log(path)[2] == size


@pytest.mark.parametrize("record", [0, 2, 3])
def test_a_bad_byte_before_the_tail_is_corruption_named_by_offset(log_of_five, record):
    path, starts = log_of_five
    flip(path, starts[record] + FRAME.size + 3)  # inside the payload: its checksum fails
    with pytest.raises(LogCorrupt) as caught:
        read_log(path)
    assert str(caught.value) == (f"log.wal: corrupt record at byte {starts[record]:,} (checksum mismatch) with good "
                                 "records after it; see `pinclip index verify` and `pinclip index repair`")
    assert caught.value.offset == starts[record] and caught.value.why == "checksum mismatch"
    assert path.stat().st_size > starts[4]  # nothing was cut


def test_a_bad_length_field_before_the_tail_is_corruption_not_a_tail(log_of_five):
    path, starts = log_of_five
    flip(path, starts[1] + 2)  # the length now runs past the end of the file
    with pytest.raises(LogCorrupt, match=f"byte {starts[1]:,} \\(cut short\\)"):
        read_log(path)


def test_a_bad_checksum_in_the_last_complete_record_is_corruption(log_of_five):
    """A crash cuts a record short; it does not write a complete record with wrong bytes."""
    path, starts = log_of_five
    flip(path, starts[4] + FRAME.size + 5)
    with pytest.raises(LogCorrupt, match=f"byte {starts[4]:,}"):
        read_log(path)


def test_salvage_skips_a_bad_record_and_reads_on(log_of_five):
    path, starts = log_of_five
    flip(path, starts[2] + FRAME.size + 3)
    scan = scan_log(path, salvage=True)
    assert [op.pin_ids[0] for op in scan.ops] == ["p0", "p1", "p3", "p4"]
    assert scan.bad == [(starts[2], starts[3], "checksum mismatch")] and not scan.torn_tail


def test_not_a_log(tmp_path):
    (tmp_path / "x.wal").write_bytes(b"hello\n")
    with pytest.raises(ValueError, match="not a pinclip write log"):
        read_log(tmp_path / "x.wal")
    (tmp_path / "y.wal").write_bytes(MAGIC + b"{broken\n")
    with pytest.raises(ValueError, match="header is corrupt"):
        read_log(tmp_path / "y.wal")


def test_writes_resume_after_a_short_write(tmp_path, monkeypatch):
    log = WriteLog.create(tmp_path / "log.wal", {})
    log.sync(log.append(put(0)))
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:7]))  # the disk fills mid-record
    with pytest.raises(OSError) as short:
        log.append(put(1))
    assert short.value.errno == errno.ENOSPC  # answered 507: the disk is full
    assert str(short.value) == "[Errno 28] short write to the index's write log"
    monkeypatch.setattr(os, "write", real_write)  # space is free again
    log.sync(log.append(put(2)))
    log.close()
    assert [op.pin_ids for op in read_log(tmp_path / "log.wal")[1]] == [["p0"], ["p2"]]


def test_a_failed_fsync_fails_every_unsynced_write_and_they_are_cut(tmp_path, monkeypatch):
    log = WriteLog.create(tmp_path / "log.wal", {})
    first, second = log.append(put(0)), log.append(put(1))

    def no_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(OSError):
        log.sync(first)
    with pytest.raises(OSError):
        log.sync(second)  # covered by the failed fsync too
    monkeypatch.undo()
    third = log.append(put(2))  # cuts the two unsynced records first
    assert log.is_lost(first) and log.is_lost(second)
    with pytest.raises(OSError, match="cut from the log"):
        log.sync(second)  # its offset now belongs to another record: never acknowledged
    log.sync(third)
    assert log.is_durable(third)
    log.close()
    assert [op.pin_ids for op in read_log(tmp_path / "log.wal")[1]] == [["p2"]]


def put_with_image(i: int, image: bytes) -> bytes:
    return encode_op(LogOp("put", [f"p{i}"], np.full((1, 4), i, np.int8), [{"title": f"t{i}", "image": image}]))


FAKE_FRAME = b'\x10\x00\x00\x00\x00\x00\x00\x00{"op": "put"}'  # looks like a record start inside an image


def test_salvage_resumes_at_the_next_real_record_not_at_a_lookalike_inside_a_payload(tmp_path):
    log = WriteLog.create(tmp_path / "log.wal", {})
    starts = []
    for i, image in enumerate([b"", b"png" + FAKE_FRAME + b"more", b"", b""]):
        starts.append(log.size)
        log.sync(log.append(put_with_image(i, image)))
    log.close()
    path = tmp_path / "log.wal"
    data = bytearray(path.read_bytes())
    data[starts[1] + FRAME.size + 2] ^= 0x01  # record 1 is bad; its image holds the lookalike
    path.write_bytes(bytes(data))
    scan = scan_log(path, salvage=True)
    assert scan.bad == [(starts[1], starts[2], "checksum mismatch")]
    assert [op.pin_ids[0] for op in scan.ops] == ["p0", "p2", "p3"]  # the first good record after it, then on


def test_a_torn_last_record_with_a_lookalike_inside_is_still_a_torn_tail(tmp_path):
    log = WriteLog.create(tmp_path / "log.wal", {})
    log.sync(log.append(put(0)))
    start = log.size
    log.sync(log.append(put_with_image(1, b"png" + FAKE_FRAME + b"x" * 40)))
    log.close()
    os.truncate(tmp_path / "log.wal", (tmp_path / "log.wal").stat().st_size - 10)
    _, ops, end = read_log(tmp_path / "log.wal")
    assert len(ops) == 1 and end == start


def test_tickets_tell_durable_pending_and_lost_writes_apart(tmp_path, monkeypatch):
    log = WriteLog.create(tmp_path / "log.wal", {})
    first = log.append(put(0))
    assert not log.is_durable(first) and not log.is_lost(first)  # written, its fsync still to come
    log.sync(first)
    assert log.is_durable(first) and not log.is_lost(first)
    pending = log.append(put(1))
    assert not log.is_lost(pending)

    def no_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    for attempt in range(2):  # two failures in a row: each heal starts a new epoch
        monkeypatch.setattr(os, "fsync", no_fsync)
        with pytest.raises(OSError):
            log.sync(pending)
        assert log.is_lost(pending) and not log.is_durable(pending)
        assert log.is_durable(first) and not log.is_lost(first)  # synced exactly up to its end: kept
        monkeypatch.undo()
        pending = log.append(put(2 + attempt))
        assert log.epoch == attempt + 1 and not log.is_lost(pending)
    log.sync(pending)
    log.sync(first)  # a record synced before the cuts stays acknowledged
    log.close()
    assert log.epoch_ends == [first[1], first[1]]
    assert [op.pin_ids for op in read_log(tmp_path / "log.wal")[1]] == [["p0"], ["p3"]]


def test_a_put_of_several_pins_with_images_and_any_text_round_trips():
    codes = np.array([[1, -2, 3, 127], [-128, 0, 5, 6]], dtype=np.int64)  # converted to int8 when written
    cards = [{"title": "caf\u00e9 \ud800 \U0001f600", "image": b"first image"}, {"title": None, "image": b"2nd"}]
    op = decode_op(encode_op(LogOp("put", ["a", "b"], codes, cards)))
    assert op.codes.dtype == np.int8 and op.codes.tolist() == codes.tolist()
    assert op.cards == cards and op.pin_ids == ["a", "b"]
    assert decode_op(encode_op(LogOp("delete", ["a"]))) == LogOp("delete", ["a"])


def append_raw(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_a_partial_frame_header_at_the_end_is_a_torn_tail(log_of_five):
    path, _ = log_of_five
    size = path.stat().st_size
    append_raw(path, b"\x40\x00\x01")  # three bytes of a frame header
    scan = scan_log(path)
    assert scan.torn_tail and scan.bad == [(size, size + 3, "cut short")] and read_log(path)[2] == size


@pytest.mark.parametrize("crc", [b"\x01\x02\x03\x04", b"XXXX"])
def test_an_empty_frame_is_corruption_not_a_tail(log_of_five, crc):
    path, _ = log_of_five
    size = path.stat().st_size
    append_raw(path, b"\x00\x00\x00\x00" + crc)  # length 0, a checksum no empty payload has
    with pytest.raises(LogCorrupt, match=f"byte {size:,} \\(checksum mismatch\\)"):
        read_log(path)


def test_a_record_whose_checksum_holds_but_whose_payload_is_not_an_op_is_corruption(log_of_five):
    path, starts = log_of_five
    garbage = b"not json at all"
    data = path.read_bytes()
    forged = FRAME.pack(len(garbage), zlib.crc32(garbage)) + garbage
    path.write_bytes(data[: starts[2]] + forged + data[starts[2]:])
    with pytest.raises(LogCorrupt, match=f"byte {starts[2]:,} \\(undecodable payload\\)"):
        read_log(path)


def test_reopening_closes_the_file_when_the_tail_cannot_be_cut(log_of_five, monkeypatch):
    path, starts = log_of_five
    append_raw(path, b"\x40\x00")
    closed = []
    real_close = os.close
    monkeypatch.setattr(os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(fd), real_close(fd)))
    with pytest.raises(OSError, match="EIO"):
        WriteLog.open_existing(path, path.stat().st_size - 2)
    assert len(closed) == 1


def test_a_record_at_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(wal, "MAX_RECORD", 64)
    log = WriteLog.create(tmp_path / "log.wal", {})
    with pytest.raises(ValueError, match="64 bytes is too large"):
        log.append(b"x" * 64)
    log.sync(log.append(b"x" * 63))
    log.close()


def test_a_failed_write_also_fails_the_unsynced_writes_before_it(tmp_path, monkeypatch):
    """After a write error the file's state is suspect: writes still waiting for their fsync fail too."""
    log = WriteLog.create(tmp_path / "log.wal", {})
    waiting = log.append(put(0))
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(OSError):
        log.append(put(1))
    monkeypatch.undo()
    with pytest.raises(OSError):
        log.sync(waiting)
    log.sync(log.append(put(2)))
    log.close()
    assert [op.pin_ids for op in read_log(tmp_path / "log.wal")[1]] == [["p2"]]


def test_a_new_log_is_the_magic_a_sorted_header_line_and_mode_644(tmp_path):
    old_umask = os.umask(0o022)
    try:
        log = WriteLog.create(tmp_path / "log.wal", {"model_version": "m", "dim": 4})
    finally:
        os.umask(old_umask)
    log.close()
    log.close()  # a second close does nothing
    assert log.fd == -1
    assert (tmp_path / "log.wal").read_bytes() == MAGIC + b'{"dim": 4, "model_version": "m"}\n'
    assert (tmp_path / "log.wal").stat().st_mode & 0o777 == 0o644


def test_a_log_whose_creation_fails_is_closed_and_the_error_kept(tmp_path, monkeypatch):
    closed = []
    real_close = os.close
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(fd), real_close(fd)))
    with pytest.raises(OSError, match="No space left"):
        WriteLog.create(tmp_path / "log.wal", {})
    assert len(closed) == 1


def test_another_file_with_lines_is_not_a_log(tmp_path):
    (tmp_path / "notes.txt").write_bytes(b"some notes\nwith lines\n")
    with pytest.raises(ValueError, match="notes.txt: not a pinclip write log"):
        read_log(tmp_path / "notes.txt")
