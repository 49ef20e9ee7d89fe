"""Peak server memory under a bounded burst of large image uploads (decodes bounded and downscaled)."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from durability import start_server
from PIL import Image
from serve_fakes import FakeEmbedder

from bench.image_burst import big_png  # noqa: E402  the same 4400x4400 PNG as the benchmark
from pinclip.quant import quantize
from pinclip.serve.faiss_backend import FaissBackend
from pinclip.serve.index import PinIndex

BURST = 16


def memory_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def test_a_burst_of_large_images_keeps_server_memory_bounded(tmp_path):
    fake = FakeEmbedder()
    codes = quantize(fake.embed_texts([f"pin {i}" for i in range(50)]), fake.quant)
    FaissBackend.create(tmp_path / "idx", PinIndex.build(codes, [f"p{i}" for i in range(50)], fake.quant, fake.version))
    png = big_png()
    assert len(png) < 200_000
    proc, url = start_server(tmp_path / "idx", 1 << 30)
    try:
        with httpx.Client(base_url=url, timeout=120) as http:  # warm up: every code path loaded once
            assert http.post("/search/image", files={"file": ("s.png", _small_png())}).status_code == 200
        before = memory_mb(proc.pid)

        def post(_: int) -> int:
            with httpx.Client(base_url=url, timeout=300) as http:
                return http.post("/search/image", files={"file": ("big.png", png, "image/png")},
                                 data={"k": "3"}).status_code

        with ThreadPoolExecutor(BURST) as pool:
            statuses = list(pool.map(post, range(BURST)))
        after = memory_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert statuses == [200] * BURST
    growth = after["VmHWM"] - before["VmRSS"]
    # bounded: two decodes at a time of 58 MB each and their reductions; unbounded it is ~BURST x 116 MB
    assert growth < 450, f"peak grew by {growth:.0f} MiB under {BURST} concurrent 4400x4400 uploads"
    assert after["VmRSS"] - before["VmRSS"] < 300, f"{after['VmRSS'] - before['VmRSS']:.0f} MiB kept after the burst"


def _small_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
