"""Every write, fsync, rename and truncate of the index folder's write path, failed in turn as a crash,
an ENOSPC and an EIO: no acknowledged write lost, nothing half-applied, writes resume (tests/crash_points.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from crash_points import (
    FaultInjector,
    enumerate_crash_points,
    make_embeddings,
    make_template,
    run_workload,
    seed_ledger,
)

MIN_POINTS = 100  # the workload's calls when this was written: 110 (three compactions, open, index add)


@pytest.fixture
def prepared(tmp_path_factory):
    """Built per test, not per module: mutmut credits the functions a fixture runs to the test it ran in."""
    root = tmp_path_factory.mktemp("crash")
    embeddings = make_embeddings(root)
    return root, make_template(root), embeddings


@pytest.fixture
def tmp_path():
    """A folder in memory where there is one (/dev/shm): the runs fsync hundreds of times, and the faults are
    injected, not the disk's, so a real disk adds only time."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="pinclip-crash-", dir=shm if shm.is_dir() else None) as folder:
        yield Path(folder)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["crash", "enospc", "eio"])
def test_every_call_of_the_write_path_can_fail_without_losing_an_acknowledged_write(prepared, mode, tmp_path):
    _, template, embeddings = prepared
    result = enumerate_crash_points(tmp_path, template, embeddings, modes=(mode,))
    assert result.points >= MIN_POINTS and result.runs[mode] == result.points
    assert {call.split()[0] for call in result.calls} == {"write", "fsync", "replace", "ftruncate"}
    assert result.acknowledged > 5 * result.points  # most runs acknowledge most writes
    assert result.failures == []


@pytest.mark.parametrize("mode", ["crash", "enospc", "eio"])
def test_the_manifest_and_snapshot_renames_can_fail_in_every_mode(prepared, mode, tmp_path):
    """The fast subset (make mutants runs it): every call on index.json and every snapshot rename."""
    _, template, embeddings = prepared
    for only in ("index.json", "replace snap-"):
        result = enumerate_crash_points(tmp_path / only.split()[-1], template, embeddings, modes=(mode,), only=only)
        assert result.runs[mode] >= 3 and result.failures == []


def test_the_fault_free_workload_covers_both_compactions_and_index_add(prepared, tmp_path):
    import shutil

    _, template, embeddings = prepared
    shutil.copytree(template, tmp_path / "idx")
    ledger, injector = seed_ledger(embeddings), FaultInjector(tmp_path / "idx")
    assert run_workload(tmp_path / "idx", embeddings, ledger, injector)
    assert ledger.failed_steps == [] and ledger.acknowledged == 14
    renamed = [c for c in injector.calls if c.startswith("replace snap-")]
    assert renamed == ["replace snap-000002", "replace snap-000003", "replace snap-000004"]  # manual, automatic x2
    assert injector.calls[1] == "ftruncate log-000001.wal"  # the template's torn tail is cut on open


def test_the_harness_catches_a_write_path_that_switches_logs_before_the_manifest(prepared, tmp_path, monkeypatch):
    """The bug this harness was built for: writes acknowledged into a log no durable manifest names."""
    from pinclip.serve.faiss_backend import FaissBackend

    def rotate_early(self):  # the old order: the new log is used before the manifest naming it is on disk
        old = self.log
        old.sync((old.epoch, old.written))
        self._apply_synced()
        generation = self._next_generation()
        self.log = self._new_log(generation)
        self._commit(self.manifest["snapshot"], [*self.manifest["logs"], self.log.path.name], generation,
                     self.manifest.get("checksums", {}))

    monkeypatch.setattr(FaissBackend, "_rotate", rotate_early)
    _, template, embeddings = prepared
    result = enumerate_crash_points(tmp_path, template, embeddings, modes=("enospc",), only="index.json")
    assert result.lost >= 1, result.failures
