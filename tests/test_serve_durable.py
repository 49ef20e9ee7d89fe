"""The durable index folder: writes survive restarts and kill -9, compaction, the lock, atomic `index add`."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from durability import kill_loop
from serve_fakes import FakeEmbedder, codes_for, synthetic_pins, write_pins_parquet

from pinclip.cli import main
from pinclip.serve.backend import VersionConflict
from pinclip.serve.embed import embed_pins_table
from pinclip.serve.faiss_backend import FaissBackend
from pinclip.serve.index import IndexConfig, PinIndex, PinIndexError
from pinclip.serve.wal import read_log

FAKE = FakeEmbedder()



@pytest.fixture
def folder(tmp_path):
    names = [f"seed {i}" for i in range(20)]
    index = PinIndex.build(codes_for(names), [f"s{i}" for i in range(20)], FAKE.quant, FAKE.version,
                           config=IndexConfig(kind="flat"))
    FaissBackend.create(tmp_path / "idx", index)
    return tmp_path / "idx"


def top_hit(store, text: str) -> str:
    return store.search(FAKE.embed_texts([text]), 1)[1][0][0]


def test_puts_replacements_and_deletes_survive_a_reopen(folder):
    store = FaissBackend.open(folder)
    store.put(["a", "b"], codes_for(["apple pie", "bicycle"]), [{"title": "apple pie"}, {"title": "bicycle"}],
              FAKE.version)
    store.put(["a"], codes_for(["avocado"]), [{"title": "avocado", "image": b"\x89PNG..."}], FAKE.version)
    assert store.delete(["s3", "b", "nope"]) == 2
    store.close()  # no compaction: everything is in the log
    assert [op.kind for op in read_log(folder / json.loads((folder / "index.json").read_text())["logs"][0])[1]] \
        == ["put", "put", "delete"]
    again = FaissBackend.open(folder)
    assert len(again) == 20 and "b" not in again and "s3" not in again
    assert top_hit(again, "avocado") == "a" and again.card("a") == {"title": "avocado", "image": b"\x89PNG..."}
    assert top_hit(again, "apple pie") != "a"
    again.close()


def test_compaction_folds_the_log_into_a_new_snapshot(folder):
    store = FaissBackend.open(folder)
    store.put(["a"], codes_for(["apple"]), [{"title": "apple"}], FAKE.version)
    store.delete(["s1"])
    assert store.compact()
    manifest = json.loads((folder / "index.json").read_text())
    assert manifest["snapshot"] == "snap-000002" and manifest["logs"] == ["log-000002.wal"]
    assert sorted(p.name for p in folder.iterdir()) == ["LOCK", "index.json", "log-000002.wal", "snap-000002"]
    assert store.index.faiss_index.ntotal == 20 and not store.index.dead  # the tombstone is gone
    store.put(["c"], codes_for(["cherry"]), [{"title": "cherry"}], FAKE.version)
    store.close()
    again = FaissBackend.open(folder)
    assert len(again) == 21 and top_hit(again, "cherry") == "c" and again.card("a")["title"] == "apple"
    again.close()


def test_the_log_compacts_itself_past_its_size(folder):
    store = FaissBackend.open(folder, compact_bytes=2000)
    for i in range(40):
        store.put([f"n{i}"], codes_for([f"new {i}"]), [{"title": f"new {i}"}], FAKE.version)
    store.close()  # waits for a running compaction
    manifest = json.loads((folder / "index.json").read_text())
    assert manifest["generation"] > 1 and (folder / manifest["logs"][0]).stat().st_size < 4000
    again = FaissBackend.open(folder)
    assert len(again) == 60 and all(top_hit(again, f"new {i}") == f"n{i}" for i in range(40))
    again.close()


def test_a_torn_tail_is_cut_and_only_acknowledged_records_replay(folder):
    store = FaissBackend.open(folder)
    store.put(["a"], codes_for(["apple"]), [{"title": "apple"}], FAKE.version)
    log_path = store.log.path
    store.close()
    size = log_path.stat().st_size
    with open(log_path, "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage from a write cut short")
    again = FaissBackend.open(folder)
    assert len(again) == 21 and log_path.stat().st_size == size  # tail cut back
    again.put(["b"], codes_for(["banana"]), [{"title": "banana"}], FAKE.version)
    again.close()
    assert len(read_log(log_path)[1]) == 2


def test_a_second_process_cannot_open_the_folder(folder):
    store = FaissBackend.open(folder)
    with pytest.raises(PinIndexError, match=f"open in another process \\(pid {os.getpid()}\\)"):
        FaissBackend.open(folder)
    assert main(["index", "compact", "--index", str(folder)]) == 2
    store.close()
    FaissBackend.open(folder).close()  # free again once closed


def test_writes_of_another_model_version_are_refused(folder):
    store = FaissBackend.open(folder)
    with pytest.raises(VersionConflict, match="model fake-1; this write is from model other"):
        store.put(["x"], codes_for(["x"]), [{}], "other")
    assert len(store) == 20
    store.close()


def _embedded(folder, n, prefix):
    pins = synthetic_pins(folder, n)
    for pin in pins:
        pin["pin_id"] = prefix + pin["pin_id"]
    write_pins_parquet(pins, folder / "pins.parquet")
    embed_pins_table(FakeEmbedder(), folder / "pins.parquet", folder / "emb", progress=False)
    return folder / "emb"


def test_index_add_is_atomic_when_a_write_fails_part_way(tmp_path, monkeypatch, capsys):
    base, fresh = _embedded(tmp_path / "a", 12, "a-"), _embedded(tmp_path / "b", 9, "b-")
    assert main(["index", "build", "--embeddings", str(base), "--out", str(tmp_path / "idx")]) == 0
    real_write = os.write

    def failing_write(fd, data):  # the disk fills up half-way through the log record
        if len(data) > 200:
            real_write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        main(["index", "add", "--index", str(tmp_path / "idx"), "--embeddings", str(fresh)])
    monkeypatch.setattr(os, "write", real_write)
    index = PinIndex.load(tmp_path / "idx")  # loads, with none of the new pins
    assert len(index) == 12 and not any(p.startswith("b-") for p in index.pin_ids)
    assert main(["index", "add", "--index", str(tmp_path / "idx"), "--embeddings", str(fresh)]) == 0
    assert len(PinIndex.load(tmp_path / "idx")) == 21


def test_a_compaction_that_fails_part_way_leaves_the_index_whole(folder, monkeypatch):
    import pinclip.serve.faiss_backend as fb

    store = FaissBackend.open(folder)
    store.put(["a"], codes_for(["apple"]), [{"title": "apple"}], FAKE.version)

    def broken(*args, **kwargs):
        raise OSError(5, "I/O error while writing the snapshot")

    monkeypatch.setattr(fb, "write_snapshot", broken)
    before = json.loads((folder / "index.json").read_text())
    with pytest.raises(OSError):
        store.compact()
    after = json.loads((folder / "index.json").read_text())  # the rotation's manifest: old snapshot, both logs
    assert after["snapshot"] == before["snapshot"] and after["checksums"] == before["checksums"]
    assert after["logs"] == [*before["logs"], store.log.path.name] and len(after["logs"]) == 2
    assert after["generation"] == 2 and store.log.path.name == "log-000002.wal"
    store.put(["b"], codes_for(["banana"]), [{"title": "banana"}], FAKE.version)  # writes go on
    store.close()
    monkeypatch.undo()
    again = FaissBackend.open(folder)
    assert len(again) == 22 and top_hit(again, "apple") == "a" and top_hit(again, "banana") == "b"
    assert again.compact() and len(again) == 22
    again.close()


@pytest.mark.slow  # server subprocesses: left out of make mutants (tests/test_serve_crash_points.py covers the path)
def test_kill_9_at_random_moments_loses_no_acknowledged_write(folder):
    totals = kill_loop(folder, kills=6, seed=1, workers=3, compact_bytes=3000, max_delay_s=1.0)
    assert totals["kills"] == 6 and totals["acknowledged_writes"] > 20
    assert totals["pins_found"] == totals["pins_checked"]


def test_a_durable_write_is_applied_even_when_a_later_failure_cuts_the_log_first(folder, monkeypatch):
    """Writer a's fsync succeeded, but before a applies its write, b's fsync fails and c's append cuts the
    log back: a must still be applied (it is on disk and acknowledged), b dropped, c applied."""
    from pinclip.serve.wal import LogOp, encode_op

    store = FaissBackend.open(folder)
    log = store.log
    ops = {p: LogOp("put", [p], codes_for([f"fruit {p}"]), [{"title": p}]) for p in "ab"}
    for p in "ab":
        ticket = log.append(encode_op(ops[p]))
        store.unapplied.append((log, ticket, ops[p]))
        if p == "a":
            log.sync(ticket)  # a is durable; it has not taken the store's lock to apply yet
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(OSError):
        log.sync(store.unapplied[-1][1])
    monkeypatch.undo()
    store.put(["c"], codes_for(["cherry"]), [{"title": "c"}], FAKE.version)  # cuts b, then applies a and c
    assert "a" in store and "b" not in store and "c" in store and store.unapplied == []
    store.close()
    again = FaissBackend.open(folder)
    assert "a" in again and "b" not in again and "c" in again
    again.close()


def test_each_time_the_log_outgrows_its_limit_a_new_background_compaction_runs(folder):
    store = FaissBackend.open(folder, compact_bytes=500)
    threads = []
    for i in range(12):
        store.put([f"n{i}"], codes_for([f"new {i}"]), [{"title": f"new {i}"}], FAKE.version)
        if store.compactor is not None and store.compactor not in threads:
            threads.append(store.compactor)
            store.compactor.join()  # one at a time, so each overflow starts its own
    assert len(threads) >= 3 and all(t.name == "index-compaction" and t.daemon for t in threads)
    assert int(store.manifest["generation"]) == 1 + len(threads)
    store.close()


def test_log_bytes_counts_the_logs_the_manifest_names(folder):
    store = FaissBackend.open(folder)
    empty = store.log_bytes()
    store.put(["a"], codes_for(["apple"]), [{"title": "apple"}], FAKE.version)
    assert store.log_bytes() == store.log.size > empty > 0
    store.close()
    assert FaissBackend(store.index).log_bytes() == 0  # an index held in memory only


def test_search_by_id_through_the_backend(folder):
    store = FaissBackend.open(folder)
    scores, ids = store.search_by_id("s4", 3)
    assert len(ids) == 3 and "s4" not in ids and list(scores) == sorted(scores, reverse=True)
    assert store.search_by_id("s4", 3, exclude_self=False)[1][0] == "s4"
    store.close()


@pytest.mark.parametrize(("error", "reason"), [(OSError(28, "No space left on device", "/tmp/x"), "No space left on device"),
                                               (PinIndexError("snapshot refused"), "PinIndexError")])
def test_a_failed_background_compaction_is_one_line_without_paths(folder, monkeypatch, capsys, error, reason):
    import pinclip.serve.faiss_backend as fb

    store = FaissBackend.open(folder)
    store.put(["a"], codes_for(["apple"]), [{"title": "apple"}], FAKE.version)

    def broken(*args):
        raise error

    monkeypatch.setattr(fb, "write_snapshot", broken)
    store._compact_quietly()
    assert capsys.readouterr().err == f"pinclip: compaction of the index failed, writes go on in the log ({reason})\n"
    store.put(["b"], codes_for(["banana"]), [{"title": "banana"}], FAKE.version)  # writes go on
    assert "a" in store and "b" in store
    store.close()


def test_compact_returns_false_at_once_when_busy_or_in_memory(folder):
    store = FaissBackend.open(folder)
    store.compacting.acquire()  # a compaction is running
    assert store.compact() is False
    store.compacting.release()
    assert store.compact() is True
    store.close()
    assert FaissBackend(store.index).compact() is False


def test_a_put_that_would_not_replay_is_refused_before_it_is_logged(folder):
    store = FaissBackend.open(folder)
    size = store.log.size
    with pytest.raises(PinIndexError, match="codes of shape"):
        store.put(["x"], np.zeros((1, 5), np.int8), [{"title": "x"}], FAKE.version)
    with pytest.raises(PinIndexError, match="repeated within one write"):
        store.put(["y", "y"], codes_for(["y", "y"]), [{}, {}], FAKE.version)
    assert store.log.size == size and "x" not in store and "y" not in store
    store.close()
    FaissBackend.open(folder).close()  # the log still replays


def test_an_index_held_in_memory_takes_writes_without_a_log():
    index = PinIndex.build(codes_for(["one", "two"]), ["p1", "p2"], FAKE.quant, FAKE.version,
                           config=IndexConfig(kind="flat"))
    store = FaissBackend(index)
    store.put(["p3"], codes_for(["three"]), [{"title": "three"}], FAKE.version)
    assert store.delete(["p1"]) == 1 and "p3" in store and "p1" not in store and store.card("p3") == {"title": "three"}


def test_compaction_starts_only_past_the_limit_not_at_it(folder):
    from pinclip.serve.wal import FRAME, LogOp, encode_op

    store = FaissBackend.open(folder)
    op = LogOp("put", ["a"], codes_for(["apple"]), [{"title": "apple"}])
    store.compact_bytes = store.log.size + FRAME.size + len(encode_op(op))  # exactly the size after this put
    store.put(["a"], op.codes, op.cards, FAKE.version)
    assert store.log.size == store.compact_bytes and store.compactor is None
    store.put(["b"], codes_for(["banana"]), [{"title": "banana"}], FAKE.version)
    assert store.compactor is not None
    store.close()


def test_a_folder_of_the_older_layout_is_converted_on_open(tmp_path):
    """A bare snapshot (index.faiss, ids.parquet, index.json at the top) becomes an index folder."""
    PinIndex.build(codes_for(["one", "two"]), ["p1", "p2"], FAKE.quant, FAKE.version,
                   config=IndexConfig(kind="flat")).save(tmp_path / "old")
    store = FaissBackend.open(tmp_path / "old")
    assert len(store) == 2 and store.manifest["snapshot"] == "snap-000001" and store.manifest["checksums"]
    store.delete(["p1"])
    assert store.card("p2") is None and "p1" not in store
    store.close()
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["LOCK", "index.json", "log-000001.wal",
                                                                  "snap-000001"]


def test_a_deleted_pin_loses_its_card(folder):
    store = FaissBackend.open(folder)
    store.put(["a"], codes_for(["apple"]), [{"title": "apple"}], FAKE.version)
    store.delete(["a"])
    assert store.card("a") is None
    store.close()
    again = FaissBackend.open(folder)
    assert again.card("a") is None and "a" not in again
    again.close()


def test_create_makes_parent_folders_and_replaces_an_index_already_there(tmp_path):
    first = PinIndex.build(codes_for(["one", "two"]), ["p1", "p2"], FAKE.quant, FAKE.version,
                           config=IndexConfig(kind="flat"))
    FaissBackend.create(tmp_path / "a" / "b" / "idx", first)
    store = FaissBackend.open(tmp_path / "a" / "b" / "idx")
    store.put(["p3"], codes_for(["three"]), [{"title": "three"}], FAKE.version)
    store.delete(["p1"])
    store.close()
    second = PinIndex.build(codes_for(["four", "five", "six"]), ["p4", "p5", "p6"], FAKE.quant, FAKE.version,
                            config=IndexConfig(kind="flat"))
    second.delete(["p6"])  # a tombstone: the snapshot holds the live rows only
    FaissBackend.create(tmp_path / "a" / "b" / "idx", second, {"p4": {"title": "four", "image": None}})
    again = FaissBackend.open(tmp_path / "a" / "b" / "idx")
    assert sorted(again.index.pin_ids) == ["p4", "p5"] and again.index.faiss_index.ntotal == 2
    assert again.manifest["generation"] == 2 and again.card("p4") == {"title": "four", "image": None}
    assert sorted(p.name for p in (tmp_path / "a" / "b" / "idx").iterdir()) == [
        "LOCK", "index.json", "log-000002.wal", "snap-000002"]
    again.close()


def test_the_manifest_and_log_header_as_written(folder):
    text = (folder / "index.json").read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    assert set(manifest) == {"kind", "dim", "field", "model_version", "quant", "params", "format", "snapshot", "logs",
                             "generation", "sources", "checksums"}
    assert manifest["format"] == "pinclip-index/2" and manifest["sources"] == [] and manifest["generation"] == 1
    assert sorted(manifest["checksums"]) == [f"snap-000001/{f}" for f in
                                             ("cards.parquet", "ids.parquet", "index.faiss", "index.json")]
    header = read_log(folder / manifest["logs"][0])[0]
    assert header == {"model_version": FAKE.version, "dim": 32, "field": "pin"}


@pytest.mark.parametrize(("content", "named"), [(b"", "pid ?"), (b"\xff\xfe12\n", "pid \ufffd\ufffd12")])
def test_the_lock_names_its_holder_as_well_as_it_can(folder, content, named):
    import fcntl

    from pinclip.serve.index_folder import lock_folder

    holder = os.open(folder / "LOCK", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # held by a process that has not written (or garbled) its pid
    os.ftruncate(holder, 0)
    os.pwrite(holder, content, 0)
    with pytest.raises(PinIndexError, match=re.escape(f"({named})")):
        lock_folder(folder)
    os.close(holder)
    fd = lock_folder(folder)
    assert (folder / "LOCK").read_text() == f"{os.getpid()}\n" and (folder / "LOCK").stat().st_mode & 0o777 == 0o644
    os.close(fd)


def test_a_folder_without_checksums_survives_a_failed_compaction(folder, monkeypatch):
    """A manifest of an older version has no checksums; the rotation's manifest must stay readable."""
    import pinclip.serve.faiss_backend as fb

    data = json.loads((folder / "index.json").read_text())
    data.pop("checksums")
    (folder / "index.json").write_text(json.dumps(data))
    store = FaissBackend.open(folder)
    store.put(["a"], codes_for(["apple"]), [{"title": "apple"}], FAKE.version)
    monkeypatch.setattr(fb, "write_snapshot", lambda *args: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        store.compact()
    store.close()
    again = FaissBackend.open(folder)
    assert "a" in again and json.loads((folder / "index.json").read_text())["checksums"] == {}
    again.close()


def test_closing_twice_is_harmless_and_frees_the_lock(folder):
    store = FaissBackend.open(folder)
    store.close()
    store.close()
    assert store.lock_fd == -1 and store.log is None
    FaissBackend.open(folder).close()


@pytest.mark.parametrize("change", [{"logs": []}, {"snapshot": None}, {"logs": None}])
def test_a_manifest_without_a_snapshot_or_a_log_is_refused(folder, change):
    data = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(PinIndexError, match="not a pinclip index folder"):
        FaissBackend.open(folder)


def test_images_and_titles_survive_compaction_in_typed_columns(folder):
    import pyarrow.parquet as pq

    store = FaissBackend.open(folder)
    store.put(["a", "b"], codes_for(["apple", "banana"]), [{"title": "apple", "image": b"\x89PNG apple"},
                                                          {"title": None, "image": None}], FAKE.version)
    (folder / "snap-000002.tmp").mkdir()
    (folder / "snap-000002.tmp" / "stale.bin").write_bytes(b"from a crash")  # a leftover of an earlier attempt
    assert store.compact()  # into a generation above the leftover's name, which is then removed
    store.close()
    assert not (folder / "snap-000002.tmp").exists() and store.manifest["snapshot"] == "snap-000003"
    snapshot = folder / json.loads((folder / "index.json").read_text())["snapshot"]
    assert sorted(p.name for p in snapshot.iterdir()) == ["cards.parquet", "ids.parquet", "index.faiss", "index.json"]
    schema = pq.read_schema(snapshot / "cards.parquet")
    assert [str(schema.field(n).type) for n in ("pin_id", "title", "image")] == ["string", "string", "binary"]
    again = FaissBackend.open(folder)
    assert again.card("a") == {"title": "apple", "image": b"\x89PNG apple"}
    assert again.card("b") == {"title": None, "image": None}
    again.close()


def test_a_snapshot_of_an_older_version_without_cards_opens_without_titles(folder):
    data = json.loads((folder / "index.json").read_text())
    data.pop("checksums")
    (folder / "index.json").write_text(json.dumps(data))
    (folder / data["snapshot"] / "cards.parquet").unlink()
    store = FaissBackend.open(folder)
    assert len(store) == 20 and store.card("s1") is None
    store.close()
