"""`pinclip run` as a user with their own catalog meets it: broken image paths stop it with the fix, a
text-only catalog trains, a mistyped key stops it before any stage, the split settings pass through,
a resumed run keeps its stage times, redirected logs hold no progress bars, and the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pinclip.cli import main


def write_jsonl_catalog(catalog: dict[str, Path], folder: Path, images: bool = True) -> dict[str, Path]:
    """The synthetic catalog as jsonl with a board_kind column (color boards are keyword boards)."""
    folder.mkdir(parents=True, exist_ok=True)
    if images:
        (folder / "images").symlink_to(catalog["pins"].parent / "images")
    pins = [{k: v for k, v in row.items() if images or k != "image"} for row in pq.read_table(catalog["pins"]).to_pylist()]
    kinds = {"color": "keyword", "shape": "category"}
    boards = [{**row, "board_kind": kinds.get(row["board_id"].split("-")[0], "curated")}
              for row in pq.read_table(catalog["boards"]).to_pylist()]
    paths = {"pins": folder / "pins.jsonl", "boards": folder / "boards.jsonl"}
    for name, rows in (("pins", pins), ("boards", boards)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def run(tables: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["run", "--pins", str(tables["pins"]), "--boards", str(tables["boards"]), "--out", str(out),
                 "--preset", "tiny", "--steps", "4", *extra])


@pytest.fixture(scope="module")
def text_only_run(catalog, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text-only")
    tables = write_jsonl_catalog(catalog, root / "mine", images=False)
    assert run(tables, root / "run", "--skip-eval") == 0
    return root


def test_image_paths_relative_to_another_folder_stop_the_run_before_training(catalog, tmp_path, capsys):
    tables = write_jsonl_catalog(catalog, tmp_path / "mine")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    tables = {**tables, "pins": tables["pins"].rename(moved / "pins.jsonl")}  # images/ stays behind
    out = tmp_path / "run"
    assert run(tables, out) == 2
    err = capsys.readouterr().err
    assert "72 of 72 images could not be used" in err and "relative to the pins table's folder" in err
    assert "Traceback" not in err and not (out / "train").exists()
    validation = (out / "data" / "validation.txt").read_text()  # the file the error names is there
    assert f"all of them in {out / 'data' / 'validation.txt'}:" in err
    assert validation.rstrip().endswith("invalid: 1 fatal problem(s)")


def test_a_text_only_catalog_trains_and_embeds(text_only_run):
    out = text_only_run / "run"
    meta = json.loads((out / "train" / "final" / "meta.json").read_text())
    assert meta["train_pins"] > 0 and "chosen_step" in meta
    manifest = json.loads((out / "embed" / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["rows"] for s in manifest["shards"]) == 72


def test_keyword_boards_are_not_held_out_by_default(text_only_run):
    splits = json.loads((text_only_run / "run" / "data" / "splits.json").read_text())
    assert splits["heldout_boards"] and not any(b.startswith("color-") for b in splits["heldout_boards"])


def test_a_resumed_run_keeps_the_stage_times_and_the_chosen_step(text_only_run):
    out = text_only_run / "run"
    first = json.loads((out / "timings.json").read_text())
    assert first["training"]["chosen_step"] in (2, 4) and first["stages"]["train"] > 0
    assert run({"pins": text_only_run / "mine" / "pins.jsonl", "boards": text_only_run / "mine" / "boards.jsonl"},
               out, "--skip-eval") == 0
    again = json.loads((out / "timings.json").read_text())
    assert again["skipped"] == ["validate", "split", "train", "embed", "index"]
    assert {k: again["stages"][k] for k in ("validate", "features", "train")} == \
        {k: first["stages"][k] for k in ("validate", "features", "train")}
    assert list(again["stages"]) == list(first["stages"])


def test_the_model_card_is_written_beside_the_model(text_only_run):
    card = (text_only_run / "run" / "train" / "final" / "MODEL_CARD.md").read_text()
    for heading in ("## Model", "## Data", "## Splits", "## Intended use", "## Evaluation", "## Known weaknesses"):
        assert heading in card, heading
    assert "pins: 72 (0 skipped)" in card and "Title-only pins" in card


def test_a_mistyped_config_key_stops_the_run_before_any_stage(catalog, tmp_path, capsys):
    tables = write_jsonl_catalog(catalog, tmp_path / "mine")
    assert run(tables, tmp_path / "run", "train.batch_sise=8") == 2
    assert "unknown config key 'train.batch_sise'; did you mean 'train.batch_size'?" in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()


def test_split_settings_pass_through_run(catalog, tmp_path, capsys):
    tables = write_jsonl_catalog(catalog, tmp_path / "mine")
    out = tmp_path / "run"
    code = main(["run", "--pins", str(tables["pins"]), "--boards", str(tables["boards"]), "--out", str(out),
                 "--preset", "tiny", "train.steps=1", "--skip-eval", "--heldout-kinds", "keyword,category",
                 "--heldout-board-frac", "0.3", "--val-board-frac", "0.5", "--cold-frac", "0.2", "--val-frac", "0.1"])
    assert code == 0
    config = json.loads((out / "data" / "splits.json").read_text())["config"]
    assert (config["heldout_kinds"], config["heldout_board_frac"], config["val_board_frac"], config["cold_frac"],
            config["val_frac"]) == (["category", "keyword"], 0.3, 0.5, 0.2, 0.1)
    printed = capsys.readouterr().out
    assert "warning: holding out text-defined board kinds keyword as asked" in printed
    assert "warning: only" in printed  # 10 boards of those kinds: far from 30 test boards


def test_redirected_output_holds_no_progress_bars(catalog, tmp_path, capsys):
    assert main(["data", "split", "--pins", str(catalog["pins"]), "--boards", str(catalog["boards"]),
                 "--out", str(tmp_path / "splits.json")]) == 0  # hashes every image: a progress bar on a terminal
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out


def test_docstrings_point_at_docs_not_a_missing_design_file():
    root = Path(__file__).parent.parent
    cited = [str(p.relative_to(root)) for p in (root / "pinclip").rglob("*.py") if "DESIGN.md" in p.read_text()]
    assert cited == [] and not (root / "DESIGN.md").exists()
