"""Load test of the served demo model on loopback: 16 concurrent clients, before and after micro-batching.

    python bench/run.py --out bench --only serve_load        # part of `make bench`; ~80 s in all

For each server setting (`--batch-size 1`: every request its own model call; `--batch-size 32
--batch-wait-ms 5`: concurrent requests share calls) it starts `pinclip serve` on the demo run's
index and final model (127.0.0.1, a free port), then drives each endpoint for a fixed time with
16 client threads (keep-alive httpx clients): text search, image search (a demo image), related
pins, and /v1/embeddings (one title per request). Text search also runs with 1 client, for the
throughput ratio. It records requests/s, p50/p99 latency, errors (any non-2xx or failed request)
and the server's peak RSS (sampled from /proc) per endpoint. Each endpoint runs 5 s (4 s with one
client): 24 s of load per setting, under 30 s.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` importable when run as a script

from bench.common import BenchContext, BenchResult, Target, fmt, median, percentile, trained_checkpoint  # noqa: E402

CLIENTS = 16
SECONDS = {"text search": 5.0, "image search": 5.0, "related pins": 5.0, "/v1/embeddings": 5.0,
           "text search, 1 client": 4.0}
SETTINGS = {"no batching": ["--batch-size", "1"], "batching": ["--batch-size", "32", "--batch-wait-ms", "5"]}


def server_memory_mb(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def start(index: Path, checkpoint: Path, extra: list[str], port: int) -> tuple[subprocess.Popen, str]:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "pinclip", "serve", "--index", str(index), "--checkpoint",
                             str(checkpoint), "--port", str(port), "--log-level", "warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("pinclip serve did not start in 120 s")


def requests_for(run: Path, model: str) -> dict[str, Any]:
    """One request maker per endpoint: (method, path, kwargs) drawn from the demo corpus."""
    import pyarrow.parquet as pq

    pins = pq.read_table(run / "data" / "pins.parquet", columns=["pin_id", "title", "image"]).to_pylist()
    titles = [p["title"] for p in pins if p["title"]][:2000]
    ids = [p["pin_id"] for p in pins][:2000]
    image_path = next(Path(p["image"]) if Path(p["image"]).is_absolute() else run / "data" / p["image"]
                      for p in pins if isinstance(p["image"], str))
    image = image_path.read_bytes()
    return {
        "text search": lambda r: ("GET", "/search/text", {"params": {"q": r.choice(titles), "k": 10}}),
        "image search": lambda r: ("POST", "/search/image", {"files": {"file": ("q.png", image, "image/png")},
                                                             "data": {"k": "10"}}),
        "related pins": lambda r: ("GET", f"/related/{r.choice(ids)}", {"params": {"k": 10}}),
        "/v1/embeddings": lambda r: ("POST", "/v1/embeddings", {"json": {"model": model, "input": r.choice(titles)}}),
    }


def drive(url: str, make: Any, clients: int, seconds: float, pid: int) -> dict[str, Any]:
    """`clients` threads sending requests for `seconds`; latencies, errors and peak server RSS."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds
    peak = [0.0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop:
                method, path, kwargs = make(rng)
                t0 = time.perf_counter()
                try:
                    ok = http.request(method, path, **kwargs).is_success
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                errors[0] += not ok

    def watch() -> None:
        while time.monotonic() < stop + 0.5:
            peak[0] = max(peak[0], server_memory_mb(pid)["VmRSS"])
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)] + [threading.Thread(target=watch)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "errors": errors[0], "rps": len(latencies) / elapsed,
            "p50_ms": median(latencies) if latencies else None, "p99_ms": percentile(latencies, 99) if latencies else None,
            "peak_rss_mb": peak[0]}


def big_png(side: int = 4400) -> bytes:
    """A 4400x4400 RGBA PNG of a few flat shapes: ~60 KB encoded, 77 MB of pixels (under the 20 M guard)."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (side, side), (0, 0, 0, 0))  # clip art: shapes on a transparent canvas
    draw = ImageDraw.Draw(image)
    draw.ellipse((600, 600, 3800, 3800), fill=(30, 60, 220, 255))
    draw.rectangle((1800, 200, 2600, 4200), fill=(220, 30, 30, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def image_burst(url: str, pid: int, clients: int = 32) -> dict[str, Any]:
    """`clients` concurrent image searches, one 4400x4400 PNG each: server RSS before, at peak, after."""
    import httpx

    png = big_png()
    before = server_memory_mb(pid)["VmRSS"]
    peak, done = [before], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server_memory_mb(pid)["VmRSS"])
            time.sleep(0.02)

    def post(_: int) -> int:
        with httpx.Client(base_url=url, timeout=600) as http:
            return http.post("/search/image", files={"file": ("big.png", png, "image/png")}, data={"k": "10"}).status_code

    watcher = threading.Thread(target=watch)
    watcher.start()
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(post, range(clients)))
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    done.set()
    watcher.join()
    return {"clients": clients, "png_bytes": len(png), "ok": statuses.count(200), "seconds": seconds,
            "rss_before_mb": before, "rss_peak_mb": peak[0], "rss_after_mb": server_memory_mb(pid)["VmRSS"]}


def run_setting(ctx: BenchContext, checkpoint: Path, extra: list[str], port: int) -> dict[str, Any]:
    proc, url = start(ctx.demo_run / "index", checkpoint, extra, port)
    try:
        import httpx

        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        makers = requests_for(ctx.demo_run, model)
        out = {}
        for name, seconds in SECONDS.items():
            make = makers[name.split(",")[0]]
            drive(url, make, 2, 0.5, proc.pid)  # warm-up: every path loaded once
            clients = 1 if name.endswith("1 client") else CLIENTS
            out[name] = drive(url, make, clients, seconds * (0.25 if ctx.quick else 1), proc.pid)
        out["server_peak_rss_mb"] = server_memory_mb(proc.pid)["VmHWM"]
        out["image_burst"] = image_burst(url, proc.pid)
        return out
    finally:
        proc.kill()
        proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(ctx: BenchContext) -> BenchResult:
    checkpoint = trained_checkpoint(ctx)
    if checkpoint is None or not (ctx.demo_run / "index" / "index.json").is_file():
        return BenchResult("serve_load", "Serving load test", error=f"needs the demo run ({ctx.demo_run}): make demo")
    figures = {name: run_setting(ctx, checkpoint, extra, free_port()) for name, extra in SETTINGS.items()}
    return report(figures)


def report(f: dict[str, Any]) -> BenchResult:
    result = BenchResult("serve_load", f"Serving load test ({CLIENTS} concurrent loopback clients)", figures=f)
    after, before = f["batching"], f["no batching"]
    errors = sum(v["errors"] for setting in f.values() for v in setting.values() if isinstance(v, dict) and "rps" in v)
    speedup = after["text search"]["rps"] / max(after["text search, 1 client"]["rps"], 1e-9)
    result.targets = [
        Target("errors over every run", "0", str(errors), errors == 0),
        Target(f"text search: {CLIENTS} clients vs 1 (batching)", "> 1x", f"{speedup:.2f}x", speedup > 1),
        Target("text search req/s, batching vs none", "report",
               f"{after['text search']['rps']:.1f} vs {before['text search']['rps']:.1f}", None),
    ]
    for setting, runs in f.items():
        for name, v in runs.items():
            if isinstance(v, dict) and "rps" in v:
                result.table.append({"setting": setting, "endpoint": name, "req/s": fmt(v["rps"]),
                                     "p50 (ms)": fmt(v["p50_ms"] or 0), "p99 (ms)": fmt(v["p99_ms"] or 0),
                                     "errors": v["errors"], "server peak RSS (MiB)": f"{v['peak_rss_mb']:.0f}"})
    burst = after["image_burst"]
    result.targets.append(Target("image burst: 32 clients x 4400x4400 PNG, server RSS before / peak / after", "flat",
                                 f"{burst['rss_before_mb']:.0f} / {burst['rss_peak_mb']:.0f} / "
                                 f"{burst['rss_after_mb']:.0f} MiB ({burst['ok']} of 32 answered)", None))
    result.notes = [f"`pinclip serve` on the demo index and final model, 127.0.0.1; each endpoint driven for "
                    f"{SECONDS['text search']:g} s after a 0.5 s warm-up; 'no batching' is --batch-size 1, "
                    "'batching' --batch-size 32 --batch-wait-ms 5",
                    "peak RSS: the server's resident memory sampled every 50 ms during that endpoint's run"]
    return result


if __name__ == "__main__":  # the image burst alone, e.g. against another checkout: PYTHONPATH=OTHER python bench/serve_load.py
    import argparse
    import json

    parser = argparse.ArgumentParser(description="image burst against `pinclip serve` on a demo run")
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    proc, url = start(args.index, args.checkpoint, [], free_port())
    try:
        print(json.dumps(image_burst(url, proc.pid, args.clients)))
    finally:
        proc.kill()
