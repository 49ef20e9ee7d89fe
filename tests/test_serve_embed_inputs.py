"""A resumed embedding job redoes exactly the shards whose inputs changed: a mid-table edit, an image file."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from serve_fakes import COLORS, FakeEmbedder, color_png, synthetic_pins

from pinclip.serve.embed import Manifest, embed_pins_table

LONG = "x" * 60_000  # 40 pins of ~60 KB: a 2.4 MB table, larger than its first and last MiB


def write_jsonl(pins: list[dict], path) -> None:
    path.write_text("".join(json.dumps({**p, "description": LONG}) + "\n" for p in pins))


def pin_codes(out_dir) -> dict[str, list[int]]:
    rows = {}
    for shard in sorted(out_dir.glob("shard-*.parquet")):
        table = pq.read_table(shard)
        rows.update(zip(table.column("pin_id").to_pylist(), table.column("pin_q").to_pylist()))
    return rows


def test_a_same_length_edit_in_the_middle_of_a_large_table_redoes_its_shard(tmp_path):
    pins = synthetic_pins(tmp_path, 40)
    table = tmp_path / "pins.jsonl"
    write_jsonl(pins, table)
    embed_pins_table(FakeEmbedder(), table, tmp_path / "out", shard_size=8, progress=False)
    before = {s["index"]: s["sha256"] for s in Manifest.read(tmp_path / "out").shards}

    text = table.read_text()
    old, new = '"title": "yellow circle 21"', '"title": "marine circle 21"'
    assert len(old) == len(new) and text.count(old) == 1
    table.write_text(text.replace(old, new))  # same size, and neither the first nor the last MiB changes
    fake = FakeEmbedder()
    embed_pins_table(fake, table, tmp_path / "out", shard_size=8, progress=False)
    after = {s["index"]: s["sha256"] for s in Manifest.read(tmp_path / "out").shards}
    assert [i for i in after if after[i] != before[i]] == [2]  # pin 21 lives in shard 2 (pins 16-23)
    assert sum(n for kind, n in fake.calls if kind == "pin") == 8  # only that shard was embedded again

    fresh = tmp_path / "fresh"
    embed_pins_table(FakeEmbedder(), table, fresh, shard_size=8, progress=False)
    assert pin_codes(tmp_path / "out") == pin_codes(fresh)  # as if run from scratch on the edited table


def test_a_changed_image_file_redoes_its_shard(tmp_path):
    pins = synthetic_pins(tmp_path, 24)
    table = tmp_path / "pins.jsonl"
    write_jsonl(pins, table)
    embed_pins_table(FakeEmbedder(), table, tmp_path / "out", shard_size=8, progress=False)
    first = pin_codes(tmp_path / "out")
    (tmp_path / "img" / "p005.png").write_bytes(color_png(COLORS["orange"], "stripe"))  # p005 was yellow
    fake = FakeEmbedder()
    embed_pins_table(fake, table, tmp_path / "out", shard_size=8, progress=False)
    second = pin_codes(tmp_path / "out")
    assert sum(n for kind, n in fake.calls if kind == "pin") == 8
    assert second["p005"] != first["p005"] and second["p013"] == first["p013"]
    np.testing.assert_array_equal(second["p001"], first["p001"])
