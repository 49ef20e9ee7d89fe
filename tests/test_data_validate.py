"""`pinclip data validate`: the summary with hand-computed figures, problem lines and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pinclip.cli import main
from pinclip.data.validate import degree_stats, validate


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def small_dataset(tmp_path, extra_edges=()):
    Image.new("RGB", (6, 6), "green").save(tmp_path / "g.png")
    pins = [
        {"pin_id": "a", "image": "g.png", "title": "A", "queries": ["q"]},
        {"pin_id": "b", "image": "g.png", "title": "B"},
        {"pin_id": "c", "image": "missing.png", "title": "C", "annotations": ["k"]},
        {"pin_id": "d", "description": "D"},
    ]
    edges = [
        {"pin_id": p, "board_id": b} for p, b in (("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "y"))
    ]
    return (
        write_jsonl(tmp_path / "pins.jsonl", pins),
        write_jsonl(tmp_path / "boards.jsonl", edges + list(extra_edges)),
    )


def test_degree_stats_by_hand():
    stats = degree_stats(np.array([0, 1, 2, 3, 10]))
    assert (stats.min, stats.median, stats.max) == (0, 2.0, 10)
    assert stats.p90 == pytest.approx(3 + 0.6 * (10 - 3))  # linear interpolation at rank 0.9 * 4 = 3.6
    assert str(degree_stats(np.array([], dtype=int))) == "min 0, median 0, p90 0, max 0"


def test_summary_figures(tmp_path):
    summary, report = validate(*small_dataset(tmp_path))
    assert (summary.pins, summary.boards, summary.edges) == (4, 2, 5)
    assert summary.pins_without_board == 1  # d
    assert (summary.pin_degree.min, summary.pin_degree.median, summary.pin_degree.max) == (0, 1.5, 2)
    assert (summary.board_degree.min, summary.board_degree.max) == (2, 3)
    assert summary.text_coverage == {
        "title": 0.75,
        "description": 0.25,
        "caption": 0.0,
        "queries": 0.25,
        "annotations": 0.25,
    }
    assert summary.pins_with_image == 2
    assert summary.skipped == {"image": 1}
    assert not report.has_fatal


def test_command_prints_summary_and_skips_exit_0(tmp_path, capsys):
    pins, boards = small_dataset(tmp_path, [{"pin_id": "zz", "board_id": "x"}])
    assert main(["data", "validate", "--pins", pins, "--boards", boards]) == 0
    out = capsys.readouterr().out
    assert "pins: 4 (0 skipped)" in out
    assert "boards: 2, edges: 5 (1 skipped)" in out
    assert "boards per pin: min 0, median 1.5, p90 2, max 2; pins in no board: 1" in out
    assert "text coverage: title 75%, description 25%, caption 0%, queries 25%, annotations 25%" in out
    assert "images: 2 ok, 1 skipped, 2 pins without image" in out
    assert (
        f"skipped: pins.jsonl row 3, column 'image': image dropped: file not found ({tmp_path / 'missing.png'})"
        in out
    )
    assert (
        "skipped: boards.jsonl row 6, column 'pin_id': edge skipped: pin_id 'zz' is not in the pins table"
        in out
    )
    assert out.rstrip().endswith("valid (skips reported above)")


def test_command_exits_2_on_fatal_problems(tmp_path, capsys):
    pins = write_jsonl(tmp_path / "pins.jsonl", [{"pin_id": "a", "title": "A"}, {"pin_id": "a", "title": 3}])
    boards = write_jsonl(tmp_path / "boards.jsonl", [{"pin_id": "a", "board_id": "x"}])
    assert main(["data", "validate", "--pins", pins, "--boards", boards, "--no-image-check"]) == 2
    out = capsys.readouterr().out
    assert "error: pins.jsonl row 2, column 'pin_id': duplicate pin_id 'a' (first seen in row 1)" in out
    assert "error: pins.jsonl row 2, column 'title': expected a string, got int" in out
    assert "invalid: 2 fatal problem(s)" in out


def test_command_unreadable_file_is_a_clean_error(tmp_path, capsys):
    boards = write_jsonl(tmp_path / "boards.jsonl", [{"pin_id": "a", "board_id": "x"}])
    assert main(["data", "validate", "--pins", str(tmp_path / "pins.xlsx"), "--boards", boards]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "pinclip data: error: pins.xlsx: unsupported file type '.xlsx' (use .parquet, .jsonl, .csv)"
    )
