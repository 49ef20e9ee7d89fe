"""Corruption of an index folder is detected and reported, never silently repaired away: open, verify, repair."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_fakes import FakeEmbedder, codes_for

from pinclip.cli import main
from pinclip.serve.faiss_backend import FaissBackend
from pinclip.serve.index import IndexConfig, PinIndex, PinIndexError
from pinclip.serve.index_check import repair, verify
from pinclip.serve.wal import FRAME, MAGIC

FAKE = FakeEmbedder()



@pytest.fixture
def folder(tmp_path):
    """10 seed pins in the snapshot (with cards), then 30 acknowledged writes in the log."""
    titles = [f"seed {i}" for i in range(10)]
    index = PinIndex.build(codes_for(titles), [f"s{i}" for i in range(10)], FAKE.quant, FAKE.version,
                           config=IndexConfig(kind="flat"))
    FaissBackend.create(tmp_path / "idx", index, {f"s{i}": {"title": t, "image": None} for i, t in enumerate(titles)})
    store = FaissBackend.open(tmp_path / "idx")
    for i in range(30):
        store.put([f"n{i}"], codes_for([f"new {i}"]), [{"title": f"new {i}"}], FAKE.version)
    store.close()
    return tmp_path / "idx"


def manifest(folder):
    return json.loads((folder / "index.json").read_text())


def log_path(folder):
    return folder / manifest(folder)["logs"][-1]


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def record_start(path, n: int) -> int:
    """The byte offset of record n of a log: past the header line, then n frames."""
    data = path.read_bytes()
    at = data.index(b"\n", len(MAGIC)) + 1
    for _ in range(n):
        at += FRAME.size + FRAME.unpack_from(data, at)[0]
    return at


def test_a_healthy_folder_verifies(folder, capsys):
    report = verify(folder)
    assert not report.damaged and report.records == 30 and report.pins == 40
    assert main(["index", "verify", "--index", str(folder)]) == 0
    assert "ok:" in capsys.readouterr().err


def test_one_bad_byte_mid_log_stops_the_start_and_repair_keeps_the_rest(folder, tmp_path, capsys):
    path = log_path(folder)
    start = record_start(path, 12)
    flip(path, start + FRAME.size + 4)
    size = path.stat().st_size
    with pytest.raises(PinIndexError, match=f"{path.name}: corrupt record at byte {start:,}"):
        FaissBackend.open(folder)
    assert path.stat().st_size == size  # nothing cut
    assert main(["index", "verify", "--index", str(folder)]) == 1
    assert f"DAMAGE: {path.name} bytes {start:,}-" in capsys.readouterr().err
    report = repair(folder, tmp_path / "fixed")
    assert report.records == 29 and report.pins == 39 and [f.damage for f in report.findings] == [True]
    fixed = FaissBackend.open(tmp_path / "fixed")
    assert "n12" not in fixed and all(f"n{i}" in fixed for i in range(30) if i != 12)
    assert fixed.card("s3")["title"] == "seed 3" and fixed.card("n29")["title"] == "new 29"
    fixed.close()
    assert not verify(tmp_path / "fixed").damaged


@pytest.mark.parametrize("name", ["index.faiss", "ids.parquet", "cards.parquet", "index.json"])
def test_a_flipped_byte_in_a_snapshot_file_is_caught_by_its_checksum(folder, name, capsys):
    path = folder / manifest(folder)["snapshot"] / name
    flip(path, len(path.read_bytes()) // 2)
    with pytest.raises(PinIndexError, match=f"{name} does not match its checksum"):
        FaissBackend.open(folder)
    assert main(["index", "verify", "--index", str(folder)]) == 1
    assert f"/{name}: does not match its sha256" in capsys.readouterr().err


def test_a_missing_cards_file_is_an_error_not_null_titles(folder, tmp_path):
    (folder / manifest(folder)["snapshot"] / "cards.parquet").unlink()
    with pytest.raises(PinIndexError, match="cards.parquet is missing"):
        FaissBackend.open(folder)
    assert verify(folder).lines()[0] == f"DAMAGE: {manifest(folder)['snapshot']}/cards.parquet: missing"
    report = repair(folder, tmp_path / "fixed")
    assert report.pins == 40 and any("pin cards" in f.problem for f in report.findings)
    fixed = FaissBackend.open(tmp_path / "fixed")
    assert fixed.card("s1") is None and fixed.card("n1")["title"] == "new 1"  # log records keep their titles
    fixed.close()


def test_a_corrupt_cards_file_is_a_clear_error_without_checksums(folder, capsys):
    """An older manifest has no checksums: the parquet reader's failure is still one line, no traceback."""
    data = manifest(folder)
    data.pop("checksums")
    (folder / "index.json").write_text(json.dumps(data))
    path = folder / data["snapshot"] / "cards.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 50)
    assert main(["index", "compact", "--index", str(folder)]) == 2
    assert "unreadable pin cards" in capsys.readouterr().err


def test_repair_needs_the_snapshot_vectors_and_an_empty_out(folder, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(PinIndexError, match="not empty"):
        repair(folder, tmp_path / "full")
    (folder / manifest(folder)["snapshot"] / "index.faiss").write_bytes(b"junk")
    with pytest.raises(PinIndexError, match="rebuild the index"):
        repair(folder, tmp_path / "fixed")
    assert main(["index", "repair", "--index", str(folder), "--out", str(tmp_path / "fixed2")]) == 2


def test_a_torn_tail_is_only_a_note(folder, capsys):
    with open(log_path(folder), "ab") as f:
        f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"op\"")
    assert main(["index", "verify", "--index", str(folder)]) == 0
    assert "note: " in capsys.readouterr().err and "torn tail" in verify(folder).lines()[0]


def set_logs(folder, logs: list[str]) -> None:
    data = manifest(folder)
    data["logs"] = logs
    (folder / "index.json").write_text(json.dumps(data))


def test_an_unreadable_log_is_damage_and_the_next_logs_are_still_read(folder):
    log = manifest(folder)["logs"][0]
    set_logs(folder, ["log-000009.wal", log, log])  # a missing log, then the same log twice
    report = verify(folder)
    assert report.lines()[0].startswith("DAMAGE: log-000009.wal: unreadable ([Errno 2] No such file")
    assert report.records == 60 and report.damaged and len(report.findings) == 1


def test_findings_read_as_documented(folder):
    path = log_path(folder)
    start = record_start(path, 5)
    flip(path, start + FRAME.size + 4)
    with open(path, "ab") as f:
        f.write(b"\x40\x00")
    lines = verify(folder).lines()
    assert lines[0].startswith(f"DAMAGE: {path.name} bytes {start:,}-")
    assert lines[0].endswith(": corrupt records (checksum mismatch): dropped by repair")
    flip(path, start + FRAME.size + 4)  # mended: only the torn tail is left
    size = path.stat().st_size
    assert verify(folder).lines() == [f"note: {path.name} bytes {size - 2:,}-{size:,}: torn tail (cut short): a "
                                      "write never acknowledged, cut when the folder is next opened"]


def test_a_record_that_does_not_apply_is_reported_and_dropped(folder, tmp_path):
    from pinclip.serve.wal import LogOp, WriteLog, encode_op, read_log

    path = log_path(folder)
    log = WriteLog.open_existing(path, read_log(path)[2])
    log.sync(log.append(encode_op(LogOp("put", ["wide"], np.zeros((1, 7), np.int8), [{"title": "w"}]))))
    log.close()
    report = verify(folder)
    assert [f.where for f in report.findings] == [f"{path.name} record 30"]
    assert report.findings[0].problem.startswith("does not apply (") and report.findings[0].damage
    assert repair(folder, tmp_path / "fixed").pins == 40


def test_unreadable_cards_and_vectors_are_reported_by_verify(folder):
    data = manifest(folder)
    data.pop("checksums")
    (folder / "index.json").write_text(json.dumps(data))
    (folder / data["snapshot"] / "cards.parquet").write_bytes(b"PAR1 broken")
    (folder / data["snapshot"] / "index.faiss").write_bytes(b"broken")
    report = verify(folder)
    lines = report.lines()
    assert lines[0] == "note: index.json: no checksums (written by an older version): the snapshot files cannot be checked"
    assert lines[1].startswith(f"DAMAGE: {data['snapshot']}: the vectors cannot be read (")
    assert lines[2] == (f"DAMAGE: {data['snapshot']}/cards.parquet: the pin cards (titles, images) cannot be read: "
                        "repair leaves the snapshot's pins without them")
    assert report.pins is None and report.records == 30 and len(lines) == 3
