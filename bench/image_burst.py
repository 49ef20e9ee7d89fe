"""32 concurrent image searches of one 4400x4400 PNG each against `pinclip serve`: does its memory stay flat?

    python bench/image_burst.py --checkpoint runs/demo/train/final [--clients 32]   # alone; bench/serve_load.py runs it too

The server is started on a one-pin index (bench/serve_load.py `launch`); its resident memory is
sampled every 20 ms from /proc before, during and 1 s after the burst.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` importable when run as a script


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


def server_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def image_burst(url: str, pid: int, clients: int = 32) -> dict[str, Any]:
    """`clients` concurrent image searches, one 4400x4400 PNG each: server RSS before, at peak, after."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    png = big_png()
    before = server_rss_mb(pid)
    peak, done = [before], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server_rss_mb(pid))
            time.sleep(0.02)

    def post(_: int) -> int:
        with httpx.Client(base_url=url, timeout=600) as http:
            return http.post("/search/image", files={"file": ("big.png", png, "image/png")}, data={"k": "10"}).status_code

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(post, range(clients)))
    seconds = time.perf_counter() - started
    time.sleep(1.0)
    done.set()
    watcher.join()
    return {"clients": clients, "png_bytes": len(png), "ok": statuses.count(200), "seconds": seconds,
            "rss_before_mb": before, "rss_peak_mb": peak[0], "rss_after_mb": server_rss_mb(pid)}


if __name__ == "__main__":  # e.g. against another checkout: PYTHONPATH=OTHER python bench/image_burst.py --checkpoint C
    import argparse
    import json
    import os
    import tempfile

    from bench.serve_load import SERVERS, launch, stop

    parser = argparse.ArgumentParser(description="image burst against `pinclip serve` on a checkpoint")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="image-burst-") as tmp:
        server = launch(SERVERS[0], args.checkpoint, Path(tmp), sorted(os.sched_getaffinity(0))[0], quick=False)
        try:
            print(json.dumps(image_burst(server.url, server.proc.pid, args.clients)))
        finally:
            stop(server)
