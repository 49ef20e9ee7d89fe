"""The batch embedding job: shard contents, skipped rows, resume after kill -9, the Ray backend, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from serve_fakes import FakeEmbedder, synthetic_pins, write_pins_parquet

from pinclip.cli import UserError, main
from pinclip.quant import quantize
from pinclip.serve.embed import EmbedJobError, Manifest, embed_pins_table, pin_text

REPO = Path(__file__).resolve().parents[1]


def _column(table, name: str) -> list:
    return table.column(name).to_pylist()


@pytest.fixture
def pins_with_problems(tmp_path: Path) -> Path:
    """10 good pins, one with a corrupt image file, one with no image and no text, one missing file."""
    pins = synthetic_pins(tmp_path, 10)
    (tmp_path / "img" / "p003.png").write_bytes(b"not a png")
    empty = dict.fromkeys(("image", "title", "description", "caption", "queries", "annotations"))
    pins.append({**empty, "pin_id": "blank", "title": "  "})
    pins.append({**empty, "pin_id": "lost", "image": "img/missing.png", "title": "lost pin"})
    pins.append({**empty, "pin_id": "textonly", "queries": ["only words"]})
    return write_pins_parquet(pins, tmp_path / "pins.parquet")


def test_pin_text_joins_present_fields_in_schema_order():
    fields = {"title": " Red ", "description": "", "caption": None, "queries": ["a", " ", "b"], "annotations": ["x"]}
    assert pin_text(fields) == "Red. a, b. x"
    assert pin_text({}) == ""


def test_shards_hold_quantized_image_text_and_pin_embeddings(pins_with_problems, tmp_path):
    fake = FakeEmbedder()
    manifest = embed_pins_table(fake, pins_with_problems, tmp_path / "out", shard_size=4, keep_fp32=True,
                                batch_size=3, progress=False)
    # load_pins drops "blank" (no image, no text) and the missing image of "lost": 12 pins, 3 shards of 4
    assert [s["file"] for s in manifest.shards] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert manifest.complete and manifest.rows_out == 12
    totals = manifest.totals()
    assert totals["pins_skipped"] == {"no_image_no_text": 1}
    assert totals["images_unreadable"] == 2  # lost (file not found at load) + p003 (corrupt, at embedding)
    assert manifest.shards[0]["image_unreadable"] == 1
    assert manifest.shards[0]["examples"][0]["pin_id"] == "p003"

    table = pq.read_table(tmp_path / "out" / "shard-00000.parquet")
    assert _column(table, "pin_id") == ["p000", "p001", "p002", "p003"]
    assert set(_column(table, "model_version")) == {"fake-1"}
    pin0 = synthetic_pins(tmp_path / "again", 1)[0]
    from PIL import Image

    image0 = Image.open(tmp_path / "img" / "p000.png").convert("RGB")
    expected_image = quantize(fake.embed_images([image0]), fake.quant)[0]
    expected_text = quantize(fake.embed_texts([pin_text(pin0)]), fake.quant)[0]
    assert _column(table, "image_q")[0] == expected_image.tolist()
    assert _column(table, "text_q")[0] == expected_text.tolist()
    assert _column(table, "image_q")[3] is None  # corrupt image: no image embedding ...
    assert _column(table, "pin_q")[3] is not None  # ... but text and fused embeddings
    fp32 = np.array(_column(table, "pin_fp32")[0], dtype=np.float32)
    assert np.array_equal(quantize(fp32[None], fake.quant)[0], np.array(_column(table, "pin_q")[0]))
    meta = json.loads(table.schema.metadata[b"pinclip"])
    assert meta["quant"]["scale"] == pytest.approx(1 / 127) and meta["dim"] == 32

    last = pq.read_table(tmp_path / "out" / "shard-00002.parquet")
    assert _column(last, "pin_id") == ["p008", "p009", "lost", "textonly"]
    assert _column(last, "image_q")[2:] == [None, None]
    assert "image_fp32" in last.column_names


def test_restart_skips_complete_shards_and_redoes_damaged_ones(pins_with_problems, tmp_path):
    out = tmp_path / "out"
    embed_pins_table(FakeEmbedder(), pins_with_problems, out, shard_size=4, progress=False)
    original = {p.name: p.read_bytes() for p in out.iterdir()}
    again = FakeEmbedder()
    embed_pins_table(again, pins_with_problems, out, shard_size=4, progress=False)
    assert again.calls == []  # everything was complete
    (out / "shard-00001.parquet").write_bytes(b"damaged")
    (out / ".shard-00002.parquet.tmp-123").write_bytes(b"half a shard")
    third = FakeEmbedder()
    embed_pins_table(third, pins_with_problems, out, shard_size=4, batch_size=64, progress=False)
    assert [n for _, n in third.calls] == [4, 4, 4]  # one shard: image, text and pin calls
    assert {p.name: p.read_bytes() for p in out.iterdir()} == original


def test_a_moved_run_folder_resumes(pins_with_problems, tmp_path):
    import shutil

    embed_pins_table(FakeEmbedder(), pins_with_problems, tmp_path / "out", shard_size=4, progress=False)
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved)
    again = FakeEmbedder()
    manifest = embed_pins_table(again, moved / "pins.parquet", moved / "out", shard_size=4, progress=False)
    assert again.calls == [] and manifest.complete  # same table content, same shards: nothing redone
    assert manifest.pins["path"] == str((moved / "pins.parquet").resolve())


def test_other_settings_in_the_same_folder_are_refused(pins_with_problems, tmp_path):
    embed_pins_table(FakeEmbedder(), pins_with_problems, tmp_path / "out", shard_size=4, progress=False)
    with pytest.raises(EmbedJobError, match="shard_size"):
        embed_pins_table(FakeEmbedder(), pins_with_problems, tmp_path / "out", shard_size=5, progress=False)
    other_model = FakeEmbedder()
    other_model.version = "fake-2"
    with pytest.raises(EmbedJobError, match="model_version"):
        embed_pins_table(other_model, pins_with_problems, tmp_path / "out", shard_size=4, progress=False)


def test_fatal_input_names_file_row_and_column(tmp_path):
    pins = synthetic_pins(tmp_path, 3)
    pins[2]["pin_id"] = "p000"
    path = write_pins_parquet(pins, tmp_path / "dupes.parquet")
    with pytest.raises(UserError, match=r"dupes.parquet row 3, column 'pin_id': duplicate pin_id 'p000'"):
        embed_pins_table(FakeEmbedder(), path, tmp_path / "out", progress=False)


def _run_job(pins: Path, out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "serve_fakes.py"), str(pins), str(out), "4", str(delay)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_9_mid_run_then_restart_is_byte_identical(tmp_path):
    pins = write_pins_parquet(synthetic_pins(tmp_path, 30), tmp_path / "pins.parquet")
    reference = tmp_path / "reference"
    job = _run_job(pins, reference, 0.0)
    assert job.wait(timeout=120) == 0, job.stderr.read().decode()

    out = tmp_path / "killed"
    job = _run_job(pins, out, 0.15)  # ~0.45 s per shard of 4 pins, 8 shards
    deadline = time.monotonic() + 120
    while not (out / "shard-00001.parquet").exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    written = Manifest.read(out)
    assert not written.complete and 1 <= len(written.shards) < 8  # it really stopped mid-way
    for shard in out.glob("shard-*.parquet"):  # every visible shard is a whole parquet file
        pq.read_metadata(shard)

    embed_pins_table(FakeEmbedder(), pins, out, shard_size=4, batch_size=4, progress=False)
    names = sorted(p.name for p in reference.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    assert len(names) == 9  # 8 shards + manifest.json
    for name in names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside Ray Data
def test_ray_backend_writes_the_same_bytes(pins_with_problems, tmp_path):
    pytest.importorskip("ray.data", reason="Ray Data is an optional extra (pip install 'pinclip[ray]')")
    import ray.cloudpickle
    import serve_fakes

    from pinclip.serve.ray_backend import embed_pins_table_ray

    ray.cloudpickle.register_pickle_by_value(serve_fakes)  # Ray workers do not have tests/ on their path
    local = tmp_path / "local"
    embed_pins_table(FakeEmbedder(), pins_with_problems, local, shard_size=4, batch_size=3, progress=False)
    with_ray = tmp_path / "ray"
    manifest = embed_pins_table_ray(FakeEmbedder, pins_with_problems, with_ray, workers=2, shard_size=4,
                                    batch_size=3, progress=False)
    assert manifest.complete
    for path in local.iterdir():
        assert (with_ray / path.name).read_bytes() == path.read_bytes(), path.name


def test_ray_backend_missing_is_a_clear_error(monkeypatch, pins_with_problems, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    from pinclip.serve.ray_backend import embed_pins_table_ray

    with pytest.raises(UserError, match=r"pip install 'ray\[data\]'"):
        embed_pins_table_ray(FakeEmbedder, pins_with_problems, tmp_path / "out")


def test_cli_reports_a_bad_checkpoint_without_traceback(pins_with_problems, tmp_path, capsys):
    code = main(["embed", "--checkpoint", str(tmp_path / "nowhere"), "--pins", str(pins_with_problems),
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 2
    assert "pinclip embed: error:" in capsys.readouterr().err
