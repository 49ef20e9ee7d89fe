"""`pinclip run` on a user's catalog written as jsonl and as csv (tiny preset: wiring, not model quality),
its resume rules, and its errors; `pinclip train` on named tables."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pinclip.cli import main
from pinclip.eval.mix_cli import chosen_weight
from pinclip.serve.faiss_backend import read_index

STAGES = ["validate", "split", "features", "train", "mix", "eval", "embed", "index"]


def write_catalog(catalog: dict[str, Path], folder: Path, fmt: str) -> dict[str, Path]:
    """The synthetic catalog's tables rewritten as jsonl or csv in `folder` (images linked beside them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").symlink_to(catalog["pins"].parent / "images")
    paths = {}
    for name in ("pins", "boards"):
        rows = pq.read_table(catalog[name]).to_pylist()
        paths[name] = folder / f"{name}.{fmt}"
        if fmt == "jsonl":
            paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
            continue
        with open(paths[name], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:  # lists as a|b|c, nulls as empty cells (the documented csv form)
                writer.writerow({k: "|".join(v) if isinstance(v, list) else ("" if v is None else v)
                                 for k, v in row.items()})
    return paths


def _run(tables: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["run", "--pins", str(tables["pins"]), "--boards", str(tables["boards"]), "--out", str(out),
                 "--preset", "tiny", "--steps", "4", *extra])


def _timings(out: Path) -> dict:
    return json.loads((out / "timings.json").read_text())


def test_run_on_a_jsonl_catalog_then_resume_skips_every_stage(catalog, tmp_path):
    tables = write_catalog(catalog, tmp_path / "mine", "jsonl")
    out = tmp_path / "run"
    assert _run(tables, out) == 0
    assert list(_timings(out)["stages"]) == STAGES and _timings(out)["skipped"] == []
    assert (out / "data" / "validation.txt").read_text().startswith("pins: 72 (0 skipped)")
    splits = json.loads((out / "data" / "splits.json").read_text())
    assert splits["cold_start_pins"] and splits["heldout_boards"]
    config = (out / "train" / "final" / "config.yaml").read_text()
    assert f"pins: {tables['pins'].resolve()}" in config  # the checkpoint records the user's tables
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    unmixed = {"pinclip_no_mix"} if chosen_weight(out) > 0 else set()  # the towers' weight chosen on validation
    assert set(metrics["models"]) == {"pinclip", "frozen", "bm25"} | unmixed
    manifest = json.loads((out / "embed" / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["rows"] for s in manifest["shards"]) == 72
    index = read_index(out / "index")
    assert len(index) == 72 and index.meta.model_version == manifest["model_version"]

    trained = (out / "train" / "final" / "model.safetensors").stat().st_mtime_ns
    assert _run(tables, out) == 0  # the same command again: every stage is there
    assert _timings(out)["skipped"] == ["validate", "split", "train", "mix", "eval", "embed", "index"]
    assert (out / "train" / "final" / "model.safetensors").stat().st_mtime_ns == trained

    for folder in ("index", "embed"):  # a lost output is made again, the rest stays
        shutil.rmtree(out / folder)
    assert _run(tables, out) == 0
    assert _timings(out)["skipped"] == ["validate", "split", "train", "mix", "eval"]
    assert len(read_index(out / "index")) == 72


def test_run_on_a_csv_catalog_reads_the_same_catalog(catalog, tmp_path):
    tables = write_catalog(catalog, tmp_path / "mine", "csv")
    out = tmp_path / "run"
    assert _run(tables, out, "--skip-eval") == 0
    assert list(_timings(out)["stages"]) == ["validate", "split", "features", "train", "embed", "index"]
    from pinclip.data.splits import split_tables
    from pinclip.train.data_source import load_source, table_source

    dataset = load_source(table_source(tables["pins"], tables["boards"]))
    reference = load_source(table_source(catalog["pins"], catalog["boards"]))
    assert dataset.pins.pin_ids == reference.pins.pin_ids and dataset.pins.texts == reference.pins.texts
    made = json.loads((out / "data" / "splits.json").read_text())
    expected, _ = split_tables(dataset.pins, dataset.edges, seed=0, progress=False)
    assert made == expected  # the split of `pinclip data split`: whole duplicate groups, its default settings
    manifest = json.loads((out / "embed" / "manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["shards"]) == 72


def test_run_with_given_splits_uses_them(catalog, tmp_path):
    tables = write_catalog(catalog, tmp_path / "mine", "jsonl")
    out = tmp_path / "run"
    assert _run(tables, out, "--splits", str(catalog["splits"]), "--skip-eval") == 0
    assert _timings(out)["skipped"] == ["split"]
    assert not (out / "data" / "splits.json").exists()
    assert f"splits: {catalog['splits'].resolve()}" in (out / "train" / "final" / "config.yaml").read_text()


def test_fatal_problems_stop_the_run_before_training(catalog, tmp_path, capsys):
    tables = write_catalog(catalog, tmp_path / "mine", "jsonl")
    with open(tables["pins"], "a") as f:
        f.write(json.dumps({"pin_id": "red-circle-0", "title": "a second red circle"}) + "\n")
        f.write(json.dumps({"pin_id": "p-bad", "queries": 7}) + "\n")
    out = tmp_path / "run"
    assert _run(tables, out) == 2
    err = capsys.readouterr().err
    assert "pins.jsonl row 73, column 'pin_id': duplicate pin_id 'red-circle-0'" in err
    assert "pins.jsonl row 74, column 'queries': expected a list of strings, got int" in err
    assert "Traceback" not in err
    assert not (out / "train").exists()
    assert (out / "data" / "validation.txt").read_text().rstrip().endswith("invalid: 2 fatal problem(s)")
    assert f"2 fatal problem(s) in the tables, all of them in {out / 'data' / 'validation.txt'}:" in err


def test_missing_or_wrong_tables_are_named(catalog, tmp_path, capsys):
    tables = write_catalog(catalog, tmp_path / "mine", "jsonl")
    assert _run({**tables, "boards": tmp_path / "mine" / "edges.jsonl"}, tmp_path / "run") == 2
    assert f"--boards {tmp_path / 'mine' / 'edges.jsonl'}: file not found" in capsys.readouterr().err
    wrong = tmp_path / "mine" / "pins.txt"
    wrong.write_text("pin_id\n")
    assert _run({**tables, "pins": wrong}, tmp_path / "run") == 2
    assert "pins.txt: unsupported file type '.txt' (use .parquet, .jsonl, .csv)" in capsys.readouterr().err


def test_a_run_folder_refuses_other_tables(catalog, tmp_path, capsys):
    tables = write_catalog(catalog, tmp_path / "mine", "jsonl")
    out = tmp_path / "run"
    assert _run(tables, out, "--skip-eval") == 0
    lines = tables["pins"].read_text().splitlines()
    tables["pins"].write_text("\n".join(lines[:-1]) + "\n")  # one pin fewer
    assert _run(tables, out, "--skip-eval") == 2
    assert "holds a run made from other input (pins differ" in capsys.readouterr().err


def test_train_on_named_tables_and_on_a_jsonl_folder(catalog, tmp_path, capsys):
    tables = write_catalog(catalog, tmp_path / "mine", "jsonl")
    common = ["--preset", "tiny", "--quiet", "train.steps=2", f"train.cache_dir={tmp_path / 'cache'}"]
    out = tmp_path / "named"
    assert main(["train", "--pins", str(tables["pins"]), "--boards", str(tables["boards"]), *common,
                 f"train.out_dir={out}"]) == 0
    assert "(no splits: every pin trains)" in capsys.readouterr().out
    assert json.loads((out / "final" / "meta.json").read_text())["train_pins"] == 72

    (tmp_path / "mine" / "splits.json").write_text(catalog["splits"].read_text())
    out = tmp_path / "folder"
    assert main(["train", "--data-dir", str(tmp_path / "mine"), *common, f"train.out_dir={out}"]) == 0
    held = json.loads(catalog["splits"].read_text())
    assert json.loads((out / "final" / "meta.json").read_text())["train_pins"] == \
        72 - len(held["cold_start_pins"]) - len(held["val_pins"])


@pytest.mark.parametrize("argv, message", [
    (["--pins", "PINS"], "--pins needs --boards as well"),
    (["--data-dir", "MINE", "--pins", "PINS"], "give either --data-dir D or --pins P --boards E"),
    (["--data-dir", "NOWHERE"], "NOWHERE not found; to train on your own catalog give its tables: --pins P"),
    (["--data-dir", "MINE"], "MINE has pins.jsonl and boards.jsonl but no splits.json; make one with "
                             "`pinclip data split --pins MINE/pins.jsonl --boards MINE/boards.jsonl --out MINE/splits.json`"),
    (["--data-dir", "EMPTY"], "EMPTY holds no pins.parquet|jsonl|csv and no boards.parquet|jsonl|csv; put your tables"),
])
def test_train_data_errors_name_what_is_missing(catalog, tmp_path, capsys, argv, message):
    tables = write_catalog(catalog, tmp_path / "mine", "jsonl")
    (tmp_path / "empty").mkdir()
    names = {"PINS": str(tables["pins"]), "MINE": str(tmp_path / "mine"), "NOWHERE": str(tmp_path / "nowhere"),
             "EMPTY": str(tmp_path / "empty")}
    resolve = lambda text: [names.get(t, t) for t in text] if isinstance(text, list) else \
        text.replace("MINE", names["MINE"]).replace("NOWHERE", names["NOWHERE"]).replace("EMPTY", names["EMPTY"])  # noqa: E731
    assert main(["train", *resolve(argv), "--preset", "tiny", f"train.out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert resolve(message) in err and "pinclip data demo" not in err  # about this data, not the demo's
    assert not (tmp_path / "out").exists()
