"""Whole-table checks (pinclip/data/input_checks.py through load_pins/load_edges): image paths that do not
resolve, edges whose ids differ by case, csv lists written with commas, swapped tables."""

from __future__ import annotations

import json

from PIL import Image

from pinclip.data.tables import load_edges, load_pins
from pinclip.data.validate import format_summary, validate


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_images_that_mostly_do_not_resolve_are_fatal_with_the_fix(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "p0.png")
    rows = [{"pin_id": f"p{i}", "image": f"../elsewhere/p{i}.png" if i else "img/p0.png", "title": f"t{i}"}
            for i in range(12)]
    pins, report = load_pins(_jsonl(tmp_path / "pins.jsonl", rows))
    fatal = [str(p) for p in report.problems if p.fatal]
    assert fatal == [f"pins.jsonl, column 'image': 11 of 12 images could not be used (first: row 2, image dropped: "
                     f"file not found ({tmp_path.parent / 'elsewhere' / 'p1.png'})); image paths are read relative to "
                     f"the pins table's folder ({tmp_path}): fix the paths (or the table's place), or leave the image "
                     "column out for a text-only catalog"]
    few = [{"pin_id": "a", "image": "img/p0.png"}, {"pin_id": "b", "image": "nope.png", "title": "b"}]
    assert not load_pins(_jsonl(tmp_path / "few.jsonl", few))[1].has_fatal  # one bad image of two: a skip
    text_only = [{"pin_id": f"p{i}", "title": f"t{i}"} for i in range(12)]
    assert not load_pins(_jsonl(tmp_path / "text.jsonl", text_only))[1].has_fatal


def test_edges_naming_unknown_pins_get_a_threshold_and_the_case_hint(tmp_path):
    ids = [f"Pin{i}" for i in range(100)]
    edges = [{"pin_id": p.lower() if i % 10 == 0 else p, "board_id": "b"} for i, p in enumerate(ids)]
    _, report = load_edges(_jsonl(tmp_path / "boards.jsonl", edges), ids)
    lines = [str(p) for p in report.problems]
    assert lines[0] == ("boards.jsonl row 1, column 'pin_id': edge skipped: pin_id 'pin0' is not in the pins table "
                        "(it has 'Pin0': ids are case-sensitive)")
    assert report.has_fatal and lines[-1] == (
        "boards.jsonl, column 'pin_id': 10 of 100 edges (10.0%) name a pin_id the pins table lacks; 10 of them differ "
        "from a pin_id only by case (e.g. 'pin0' vs 'Pin0'): ids are compared exactly, write them the same way in "
        "both tables (more than 5% of the edges: the two tables do not use the same ids)")
    few = [{"pin_id": "pin0" if i == 0 else p, "board_id": "b"} for i, p in enumerate(ids)]
    _, report = load_edges(_jsonl(tmp_path / "few.jsonl", few), ids)
    assert not report.has_fatal and report.problems[-1].label == "note"  # 1%: said once, not fatal


def test_csv_lists_written_with_commas_are_noted_once(tmp_path):
    path = tmp_path / "pins.csv"
    path.write_text('pin_id,title,annotations\na,t,"cat, kitten"\nb,t,dog|puppy\nc,t,"red, blue"\n')
    pins, report = load_pins(str(path))
    assert [str(p) for p in report.problems] == [
        "pins.csv row 1, column 'annotations': 2 cell(s) of this list column hold commas but no '|' (first: "
        "'cat, kitten'); each is read as ONE item: in csv, separate list items with '|' (a|b|c) or write a JSON list"]
    assert pins.texts["annotations"] == [["cat, kitten"], ["dog", "puppy"], ["red, blue"]]


def test_swapped_pins_and_boards_are_named(tmp_path):
    pins = _jsonl(tmp_path / "pins.jsonl", [{"pin_id": "a", "title": "t"}])
    boards = _jsonl(tmp_path / "boards.jsonl", [{"pin_id": "a", "board_id": "b"}])
    _, report = validate(boards, pins, check_images=False)
    text = "\n".join(str(p) for p in report.problems)
    assert "boards.jsonl: no 'image' column and no text column" in text and "were --pins and --boards swapped?" in text


def test_the_summary_counts_the_fatal_problems(tmp_path):
    rows = [{"pin_id": "a", "title": "t"}, {"pin_id": "a", "title": "again"}, {"pin_id": "b", "queries": 3}]
    pins = _jsonl(tmp_path / "pins.jsonl", rows)
    summary, report = validate(pins, _jsonl(tmp_path / "boards.jsonl", [{"pin_id": "a", "board_id": "b"}]))
    assert sum(p.fatal for p in report.problems) == 2
    assert "fatal problems: 2 (the rows they name are in no count above)" in format_summary(summary)
