"""A small synthetic catalog in the documented format: colored shapes with texts and boards.

Pins are PNG drawings of a shape in a color; boards group pins by color, by shape and by
(color, shape) pairs, so graph neighbors and text both carry signal. Used by the model, trainer,
evaluation and serving tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (240, 210, 20),
          "purple": (140, 40, 170), "orange": (250, 140, 20)}
SHAPES = ("circle", "square", "triangle", "cross")


def draw(color: tuple[int, int, int], shape: str, size: int = 48, jitter: int = 0) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    a, b = 8 + jitter, size - 8 - jitter
    if shape == "circle":
        d.ellipse([a, a, b, b], fill=color)
    elif shape == "square":
        d.rectangle([a, a, b, b], fill=color)
    elif shape == "triangle":
        d.polygon([(size // 2, a), (a, b), (b, b)], fill=color)
    else:
        d.rectangle([size // 2 - 5, a, size // 2 + 5, b], fill=color)
        d.rectangle([a, size // 2 - 5, b, size // 2 + 5], fill=color)
    return img


def make_catalog(root: Path, copies: int = 3, seed: int = 0) -> dict[str, Path]:
    """Write pins.parquet, boards.parquet, splits.json and images/ under root; returns the paths."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    pins, edges = [], []
    for color, rgb in COLORS.items():
        for shape in SHAPES:
            for k in range(copies):
                pin_id = f"{color}-{shape}-{k}"
                draw(rgb, shape, jitter=int(rng.integers(0, 4))).save(root / "images" / f"{pin_id}.png")
                pins.append({"pin_id": pin_id, "image": f"images/{pin_id}.png", "title": f"{color} {shape}",
                             "description": f"a {shape} drawn in {color}" if k % 2 == 0 else None,
                             "caption": None, "queries": [f"{color} {shape}s"] if k == 0 else None,
                             "annotations": [color, shape], "domain": shape})
                edges += [(pin_id, f"color-{color}", f"{color} things"), (pin_id, f"shape-{shape}", f"{shape}s"),
                          (pin_id, f"{color}-{shape}", f"{color} {shape}s")]
    pq.write_table(pa.Table.from_pylist(pins), root / "pins.parquet")
    pq.write_table(pa.Table.from_pylist([{"pin_id": p, "board_id": b, "board_title": t} for p, b, t in edges]),
                   root / "boards.parquet")
    ids = [p["pin_id"] for p in pins]
    order = rng.permutation(len(ids))
    cold = sorted(ids[i] for i in order[: len(ids) // 8])
    val = sorted(ids[i] for i in order[len(ids) // 8 : len(ids) // 8 + len(ids) // 12])
    heldout = sorted(f"{c}-{s}" for c, s in [("red", "circle"), ("blue", "square"), ("green", "triangle")])
    splits = {"seed": seed, "cold_start_pins": cold, "val_pins": val, "heldout_boards": heldout}
    (root / "splits.json").write_text(json.dumps(splits, indent=1))
    return {"pins": root / "pins.parquet", "boards": root / "boards.parquet", "splits": root / "splits.json"}
