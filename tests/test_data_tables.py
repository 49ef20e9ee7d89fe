"""Reading pins and board edges: the three formats, and the exact error or skip for bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pinclip.cli import UserError
from pinclip.data.tables import load_edges, load_pins, read_table

PINS = [
    {
        "pin_id": "a",
        "image": "img/a.png",
        "title": "Red fox",
        "description": None,
        "caption": "a fox",
        "queries": ["fox", "red fox"],
        "annotations": ["animal"],
    },
    {
        "pin_id": "b",
        "image": None,
        "title": "  ",
        "description": "only text",
        "caption": None,
        "queries": None,
        "annotations": ["x", " ", "y"],
    },
    {
        "pin_id": "c",
        "image": "img/c.png",
        "title": None,
        "description": None,
        "caption": None,
        "queries": [],
        "annotations": None,
    },
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path, rows, list_style="json") -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            cells = []
            for c in columns:
                v = r.get(c)
                if isinstance(v, list):
                    v = json.dumps(v) if list_style == "json" else "|".join(v)
                cells.append("" if v is None else v)
            writer.writerow(cells)
    return str(path)


def write_parquet(path, rows) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "img" / "a.png")
    Image.new("RGBA", (8, 8), (0, 0, 255, 255)).save(tmp_path / "img" / "c.png")
    return tmp_path


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "csv-pipes"])
def test_three_formats_give_the_same_pins(images, fmt):
    path = images / f"pins.{fmt.split('-')[0]}"
    if fmt == "parquet":
        write_parquet(path, PINS)
    elif fmt == "jsonl":
        write_jsonl(path, PINS)
    else:
        write_csv(path, PINS, "pipes" if fmt == "csv-pipes" else "json")
    pins, report = load_pins(str(path))
    assert report.problems == []
    assert pins.pin_ids == ["a", "b", "c"]
    assert pins.images == [str(images / "img" / "a.png"), None, str(images / "img" / "c.png")]
    assert pins.texts["title"] == ["Red fox", None, None]
    assert pins.texts["description"] == [None, "only text", None]
    assert pins.texts["queries"] == [["fox", "red fox"], None, None]
    assert pins.texts["annotations"] == [["animal"], ["x", "y"], None]
    assert pins.text(1, "annotations") == "x, y"
    assert pins.index == {"a": 0, "b": 1, "c": 2}


def test_wrong_types_are_fatal_with_file_row_and_column(tmp_path):
    rows = [
        {"pin_id": "a", "title": "ok"},
        {"pin_id": "b", "title": ["no"]},
        {"pin_id": "c", "queries": 7},
        {"pin_id": "d", "annotations": ["fine", 3]},
        {"pin_id": 5, "title": "t"},
        {"pin_id": "", "title": "t"},
        {"pin_id": "g", "image": 12, "title": "t"},
    ]
    pins, report = load_pins(write_jsonl(tmp_path / "pins.jsonl", rows), check_images=False)
    assert [str(p) for p in report.problems] == [
        "pins.jsonl row 5, column 'pin_id': expected a non-empty string, got int",
        "pins.jsonl row 6, column 'pin_id': expected a non-empty string, got an empty string",
        "pins.jsonl row 2, column 'title': expected a string, got list",
        "pins.jsonl row 3, column 'queries': expected a list of strings, got int",
        "pins.jsonl row 4, column 'annotations': expected a list of strings, got a list containing int",
        "pins.jsonl row 7, column 'image': expected a path string or image bytes, got int",
    ]
    assert all(p.fatal for p in report.problems) and report.has_fatal
    with pytest.raises(UserError, match="invalid input:\n  pins.jsonl row 5"):
        report.raise_if_fatal()


def test_csv_list_cell_that_is_not_a_list(tmp_path):
    path = tmp_path / "pins.csv"
    path.write_text('pin_id,title,queries\na,t,"[1, 2]"\nb,t,"[oops"\nc,t,"{""k"": 1}|x"\n')
    pins, report = load_pins(str(path))
    assert [str(p) for p in report.problems] == [
        "pins.csv row 1, column 'queries': expected a list of strings, got a list containing int",
        "pins.csv row 2, column 'queries': expected a list of strings, got a cell that starts with '[' but is not valid JSON",
    ]
    assert pins.pin_ids == ["c"] and pins.texts["queries"] == [['{"k": 1}', "x"]]


def test_duplicate_pin_ids_and_missing_column_are_fatal(tmp_path):
    path = write_csv(
        tmp_path / "pins.csv",
        [{"pin_id": "a", "title": "x"}, {"pin_id": "b", "title": "y"}, {"pin_id": "a", "title": "z"}],
    )
    _, report = load_pins(path)
    assert [str(p) for p in report.problems] == [
        "pins.csv row 3, column 'pin_id': duplicate pin_id 'a' (first seen in row 1)"
    ]
    assert report.has_fatal
    path = write_csv(tmp_path / "nopin.csv", [{"id": "a", "title": "x"}])
    pins, report = load_pins(path)
    assert len(pins) == 0
    assert [str(p) for p in report.problems] == [
        "nopin.csv, column 'pin_id': missing required column 'pin_id' (columns: id, title)"
    ]


def test_bad_images_are_skipped_and_pins_without_text_dropped(images):
    Image.new("1", (3000, 3000)).save(images / "img" / "big.png")  # 9 M pixels
    (images / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [
        {"pin_id": "ok", "image": "img/a.png"},
        {"pin_id": "missing", "image": "img/none.png", "title": "has text"},
        {"pin_id": "broken", "image": "img/broken.png"},
        {"pin_id": "big", "image": "img/big.png", "annotations": ["kept"]},
        {"pin_id": "empty", "title": " "},
    ]
    pins, report = load_pins(write_jsonl(images / "pins.jsonl", rows), max_image_pixels=1_000_000)
    assert pins.pin_ids == ["ok", "missing", "big"]
    assert pins.images == [str(images / "img" / "a.png"), None, None]
    assert pins.skipped_ids == {"broken", "empty"}
    assert [str(p) for p in report.problems] == [
        f"pins.jsonl row 2, column 'image': image dropped: file not found ({images / 'img' / 'none.png'})",
        f"pins.jsonl row 3, column 'image': image dropped: corrupt image data (Truncated File Read) ({images / 'img' / 'broken.png'})",
        "pins.jsonl row 4, column 'image': image dropped: image too large: 3000x3000 = 9,000,000 pixels > 1,000,000"
        f" ({images / 'img' / 'big.png'})",
        "pins.jsonl row 3: pin 'broken' skipped: no usable image and no text",
        "pins.jsonl row 5: pin 'empty' skipped: no usable image and no text",
    ]
    assert not report.has_fatal
    assert dict(report.skipped) == {"image": 3, "pin": 2}


def test_image_bytes_in_parquet(tmp_path):
    good = tmp_path / "g.png"
    Image.new("RGB", (4, 4)).save(good)
    rows = [
        {"pin_id": "a", "image": good.read_bytes(), "title": "t"},
        {"pin_id": "b", "image": b"\x00\x01corrupt", "title": "t"},
    ]
    pins, report = load_pins(write_parquet(tmp_path / "pins.parquet", rows))
    assert pins.images[0] == good.read_bytes() and pins.images[1] is None
    assert [str(p) for p in report.problems] == [
        "pins.parquet row 2, column 'image': image dropped: not a recognized image format"
    ]


def test_edges_skip_dangling_and_duplicates(tmp_path):
    rows = [
        {"pin_id": "a", "board_id": "b1", "board_title": "Foxes"},
        {"pin_id": "c", "board_id": "b1", "board_title": "Foxes"},
        {"pin_id": "zz", "board_id": "b1"},
        {"pin_id": "gone", "board_id": "b2"},
        {"pin_id": "a", "board_id": "b1", "board_title": "Other"},
        {"pin_id": "a", "board_id": "b2", "board_title": None},
    ]
    edges, report = load_edges(write_jsonl(tmp_path / "boards.jsonl", rows), ["a", "b", "c"], {"gone"})
    assert [str(p) for p in report.problems] == [
        "boards.jsonl row 3, column 'pin_id': edge skipped: pin_id 'zz' is not in the pins table",
        "boards.jsonl row 4, column 'pin_id': edge skipped: pin_id 'gone' was skipped when loading the pins",
        "boards.jsonl row 5, column 'board_title': board 'b1' has another title 'Other'; kept 'Foxes'",
        "boards.jsonl row 5: edge skipped: duplicate of pin 'a' in board 'b1'",
    ]
    assert [p.label for p in report.problems] == ["skipped", "skipped", "note", "skipped"]
    assert dict(report.skipped) == {"edge": 3}
    assert edges.pin_index.tolist() == [0, 2, 0] and edges.board_index.tolist() == [0, 0, 1]
    assert edges.board_ids == ["b1", "b2"] and edges.board_titles == ["Foxes", None]
    assert [m.tolist() for m in edges.board_members()] == [[0, 2], [0]]


def test_edges_missing_column_and_bad_board_id(tmp_path):
    _, report = load_edges(write_csv(tmp_path / "e.csv", [{"pin_id": "a", "board": "x"}]), ["a"])
    assert [str(p) for p in report.problems] == [
        "e.csv, column 'board_id': missing required column 'board_id' (columns: pin_id, board)"
    ]
    edges, report = load_edges(write_jsonl(tmp_path / "e.jsonl", [{"pin_id": "a", "board_id": 3}]), ["a"])
    assert [str(p) for p in report.problems] == [
        "e.jsonl row 1, column 'board_id': expected a non-empty string, got int"
    ]
    assert edges.num_edges == 0


def test_unreadable_files_raise_user_errors(tmp_path):
    (tmp_path / "pins.txt").write_text("x")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("pin_id,title\n")
    (tmp_path / "bad.jsonl").write_text('{"pin_id": "a"}\n{"pin_id": \n')
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    (tmp_path / "ragged.csv").write_text("pin_id,title\na,b\nc,d,e\n")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "latin.csv").write_bytes(b"pin_id,title\na,caf\xe9\n")
    cases = {
        "pins.txt": "pins.txt: unsupported file type '.txt' (use .parquet, .jsonl, .csv)",
        "missing.csv": f"{tmp_path / 'missing.csv'}: file not found",
        "empty.csv": "empty.csv: file is empty",
        "header.csv": "header.csv: no data rows",
        "bad.jsonl": "bad.jsonl row 2 (line 2): not valid JSON (Expecting value)",
        "list.jsonl": "list.jsonl row 1 (line 1): expected a JSON object, got list",
        "ragged.csv": "ragged.csv row 2: 3 fields, the header has 2",
        "latin.csv": "latin.csv: not UTF-8 text (invalid continuation byte at byte 18)",
    }
    for name, message in cases.items():
        with pytest.raises(UserError) as err:
            load_pins(str(tmp_path / name))
        assert str(err.value) == message
    with pytest.raises(UserError, match=r"^bad.parquet: not a readable parquet file"):
        load_pins(str(tmp_path / "bad.parquet"))


def test_read_table_reports_mixed_types(tmp_path):
    table = read_table(write_jsonl(tmp_path / "ok.jsonl", PINS))
    assert table.num_rows == 3 and table.column("queries").type == pa.list_(pa.string())
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"pin_id": "a", "title": "x"}, {"pin_id": "b", "title": 4}])
    with pytest.raises(UserError) as err:
        read_table(path)
    assert str(err.value) == "mixed.jsonl row 2, column 'title': got int, earlier rows hold str"
    csv_table = read_table(write_csv(tmp_path / "p.csv", PINS, "pipes"))
    assert csv_table.column("queries").to_pylist() == ["fox|red fox", None, None]


def test_subset_and_extra_columns(tmp_path):
    rows = [{"pin_id": p, "title": p.upper(), "source": s} for p, s in (("a", "x"), ("b", "y"), ("c", "z"))]
    pins, _ = load_pins(write_parquet(tmp_path / "p.parquet", rows))
    assert pins.extra == {"source": ["x", "y", "z"]}
    sub = pins.subset([2, 0])
    assert (
        sub.pin_ids == ["c", "a"] and sub.texts["title"] == ["C", "A"] and sub.extra["source"] == ["z", "x"]
    )
    assert np.array_equal(np.asarray([len(sub)]), [2])
