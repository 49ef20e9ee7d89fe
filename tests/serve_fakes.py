"""A deterministic stand-in for `pinclip.models.embedder.Embedder`, plus synthetic pins for serving tests.

FakeEmbedder follows the Embedder API (version, dim, quant, embed_texts/embed_images/embed_pins):
text is a hashed bag of words, an image is its ink color and coverage projected to `dim`, a pin is the
normalized sum of both unit vectors; every output is L2-normalized. Run as a script it embeds
a pins table, which the resume test kills and restarts, or serves an index folder over HTTP (the
kill -9 test of the write log):

    python tests/serve_fakes.py PINS OUT_DIR SHARD_SIZE DELAY_S
    python tests/serve_fakes.py serve INDEX_DIR PORT TOKEN COMPACT_BYTES
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pinclip.data.schema import TEXT_FIELDS, field_text
from pinclip.quant import GlobalAffine

WORD = re.compile(r"\w+")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "stripe")


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class FakeEmbedder:
    """Hashed bag-of-words text, color-statistics images; deterministic across processes."""

    version = "fake-1"

    def __init__(self, dim: int = 32, delay_s: float = 0.0) -> None:
        self.dim = dim
        self.dims = [dim, dim // 2, dim // 4]  # Matryoshka prefixes
        self.delay_s = delay_s  # sleep per call, to slow a job down enough to kill it mid-way
        self.quant = GlobalAffine(scale=1.0 / 127.0, zero_point=0.0, method="minmax")
        self._color_proj = np.random.default_rng(0).standard_normal((5, dim))  # (5, D)
        self._empty = _normalize(np.random.default_rng(1).standard_normal(dim))
        self.calls: list[tuple[str, int]] = []

    def _word_vector(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def _text_raw(self, text: str) -> np.ndarray:
        words = WORD.findall(text.lower())
        if not words:
            return np.zeros(self.dim)
        return sum(self._word_vector(w) for w in words) / np.sqrt(len(words))

    def _image_raw(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.float64) / 255.0  # (16, 16, 3)
        ink = pixels.min(axis=2) < 0.9  # (16, 16) non-white pixels
        color = pixels[ink].mean(axis=0) if ink.any() else pixels.mean(axis=(0, 1))  # (3,)
        stats = np.concatenate([color - 0.5, [ink.mean() - 0.3, pixels.std() - 0.2]])  # (5,)
        return stats @ self._color_proj  # (D,)

    def _finish(self, raw: list[np.ndarray], kind: str) -> np.ndarray:
        self.calls.append((kind, len(raw)))
        if self.delay_s:
            time.sleep(self.delay_s)
        out = np.stack(raw) if raw else np.zeros((0, self.dim))
        zero = np.linalg.norm(out, axis=-1) == 0
        out[zero] = self._empty
        return _normalize(out)

    def embed_texts(self, texts: list[str], field: str = "title") -> np.ndarray:
        return self._finish([self._text_raw(t) for t in texts], "text")

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self._finish([self._image_raw(im) for im in images], "image")

    def embed_pins(self, pins: list[dict]) -> np.ndarray:
        raw = []
        for pin in pins:
            text = " ".join(field_text(pin.get(f)) for f in TEXT_FIELDS)
            parts = [self._text_raw(text)]
            if pin.get("image") is not None:
                parts.append(self._image_raw(pin["image"]))
            raw.append(sum(p / max(np.linalg.norm(p), 1e-9) for p in parts))  # unit text + unit image
        return self._finish(raw, "pin")

    def embed_pin_modes(self, pins: list[dict], modes: tuple[str, ...] = ("image", "pin")) -> dict[str, np.ndarray]:
        out = {}
        if "image" in modes:  # a pin without an image gets the empty vector (the job masks it)
            out["image"] = self._finish([self._image_raw(p["image"]) if p.get("image") is not None
                                         else np.zeros(self.dim) for p in pins], "image")
        if "pin" in modes:
            out["pin"] = self.embed_pins(pins)
        return out


def color_png(color: tuple[int, int, int], shape: str = "square", size: int = 48) -> bytes:
    """A small PNG: a colored shape on white."""
    image = Image.new("RGB", (size, size), (255, 255, 255))
    pixels = np.asarray(image).copy()
    yy, xx = np.mgrid[0:size, 0:size]
    if shape == "circle":
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2.5) ** 2
    elif shape == "stripe":
        mask = (xx // 6) % 2 == 0
    else:
        mask = (abs(yy - size / 2) < size / 3) & (abs(xx - size / 2) < size / 3)
    pixels[mask] = color
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_pins(folder: Path, n: int = 30, image_files: bool = True) -> list[dict]:
    """n pins "<color> <shape> #i" with PNG images written to folder/img (paths relative to folder)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    pins = []
    for i in range(n):
        color, shape = names[i % len(names)], SHAPES[(i // len(names)) % len(SHAPES)]
        png = color_png(COLORS[color], shape)
        if image_files:
            (folder / "img" / f"p{i:03d}.png").write_bytes(png)
        pins.append(
            {
                "pin_id": f"p{i:03d}",
                "image": f"img/p{i:03d}.png" if image_files else png,
                "title": f"{color} {shape} {i}",
                "description": f"a {color} {shape} drawn on white",
                "caption": None,
                "queries": [f"{color} {shape}"],
                "annotations": [color, shape],
            }
        )
    return pins


def write_pins_parquet(pins: list[dict], path: Path) -> Path:
    """Write pins (dicts with the schema's columns) as a parquet table."""
    image_type = pa.binary() if pins and isinstance(pins[0].get("image"), bytes) else pa.string()
    schema = pa.schema(
        [
            ("pin_id", pa.string()),
            ("image", image_type),
            ("title", pa.string()),
            ("description", pa.string()),
            ("caption", pa.string()),
            ("queries", pa.list_(pa.string())),
            ("annotations", pa.list_(pa.string())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(pins, schema=schema), path)
    return path


def serve(index_dir: str, port: str, token: str, compact_bytes: str) -> int:
    """The real app and durable index folder, with FakeEmbedder, on 127.0.0.1:port."""
    import uvicorn

    from pinclip.serve.app import create_app
    from pinclip.serve.faiss_backend import FaissBackend

    backend = FaissBackend.open(index_dir, compact_bytes=int(compact_bytes))
    app = create_app(FakeEmbedder(), backend, {}, token)
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)
    return 0


def main(argv: list[str]) -> int:
    from pinclip.serve.embed import embed_pins_table

    if argv[0] == "serve":
        return serve(*argv[1:])
    pins, out, shard_size, delay = argv
    manifest = embed_pins_table(FakeEmbedder(delay_s=float(delay)), pins, out, shard_size=int(shard_size),
                                batch_size=4, progress=False)
    print(json.dumps({"rows_out": manifest.rows_out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


def embedded_index(folder: Path, n: int = 30, embedder: FakeEmbedder | None = None):
    """Synthetic pins under folder, embedded and indexed (flat): (pins_path, PinIndex)."""
    from pinclip.serve.embed import embed_pins_table
    from pinclip.serve.index import PinIndex

    pins_path = write_pins_parquet(synthetic_pins(folder, n), folder / "pins.parquet")
    embed_pins_table(embedder or FakeEmbedder(), pins_path, folder / "emb", shard_size=16, progress=False)
    return pins_path, PinIndex.from_embeddings(folder / "emb")


def codes_for(texts: list[str]) -> np.ndarray:
    """(N, D) int8 codes of texts as the fake model embeds and quantizes them (index folder tests)."""
    from pinclip.quant import quantize

    fake = FakeEmbedder()
    return quantize(fake.embed_texts(texts), fake.quant)
