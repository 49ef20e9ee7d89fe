"""The Ray Data embedding backend as its own process: SIGKILL part-way, resume, byte-identical shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from serve_fakes import synthetic_pins, write_pins_parquet

from pinclip.serve.embed import Manifest

pytest.importorskip("ray.data", reason="Ray Data is in the dev extra: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[1]
SHARDS = 10  # 40 pins, 4 per shard


def _start_job(pins: Path, out: Path, delay: float) -> subprocess.Popen:
    """The Ray job in a session of its own (so every process it starts can be found and cleaned up)."""
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "ray_embed_job.py"), str(pins), str(out), "4",
                             str(delay)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # exit by themselves ~1 min after the raylet


def _session_processes(sid: int) -> dict[int, str]:
    """Live (not zombie) processes in session `sid`: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(entry.name)] = command
    return found


def _workers_left(sid: int) -> dict[int, str]:
    """Processes of a killed job that could still write: everything but Ray's two node agents."""
    return {pid: cmd for pid, cmd in _session_processes(sid).items() if not cmd.startswith(RAY_AGENTS)}


def _finish(job: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = job.communicate(timeout=timeout)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    return output.decode(errors="replace")


def test_ray_job_killed_with_sigkill_resumes_to_byte_identical_shards(tmp_path):
    pins = write_pins_parquet(synthetic_pins(tmp_path, 40), tmp_path / "pins.parquet")
    reference = tmp_path / "reference"
    job = _start_job(pins, reference, 0.0)
    output = _finish(job)
    assert job.returncode == 0, output

    out = tmp_path / "killed"
    job = _start_job(pins, out, 0.25)  # ~1 s per shard per actor, 10 shards on 2 actors
    deadline = time.monotonic() + 180
    while job.poll() is None and time.monotonic() < deadline:
        if (out / "manifest.json").exists() and len(Manifest.read(out).shards) >= 2:
            break
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before it could be killed:\n" + _finish(job)
    os.kill(job.pid, signal.SIGKILL)  # kill -9 of the driver, as an operator or the OOM killer would
    job.wait(timeout=30)
    deadline = time.monotonic() + 30  # the raylet, GCS and actors it started go down with it
    while _workers_left(job.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _workers_left(job.pid)
    if _session_processes(job.pid):
        os.killpg(job.pid, signal.SIGKILL)  # the agents (and anything else left), not to wait for them
    assert not left, f"processes of the killed Ray job still running: {left}"

    written = Manifest.read(out)
    assert not written.complete and 2 <= len(written.shards) < SHARDS  # it really stopped part-way
    for shard in out.glob("shard-*.parquet"):  # every visible shard is a whole parquet file
        pq.read_metadata(shard)
    kept = {s["file"]: (out / s["file"]).stat().st_ino for s in written.shards}

    job = _start_job(pins, out, 0.0)
    output = _finish(job)
    assert job.returncode == 0, output
    assert json.loads(output.strip().splitlines()[-1]) == {"rows_out": 40, "complete": True}
    assert {name: (out / name).stat().st_ino for name in kept} == kept  # finished shards were not redone
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in out.iterdir()) and len(names) == SHARDS + 1  # + manifest.json
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
