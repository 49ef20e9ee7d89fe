"""Tests for pinclip.eval.tasks on a hand-built 8-pin dataset with 4 boards, 3 held out.

pins  p0..p7; p2 is a validation pin, p6 and p7 are cold-start pins -> warm = p0 p1 p3 p4 p5
b1 held out "Red things":  p0 p1 p2 p4 p6 p7 (+ an edge to an unknown pin)
b2 in training "Blue":     p1 p3             (must not create relevance)
b3 held out, no title:     p3 p4
b4 held out "Lonely":      p0 p2
p3 has no image; p4 has no text; p7's title is blank.
"""

from __future__ import annotations

import numpy as np
import pytest

from pinclip.eval.tasks import build_eval_tasks, split_pin_indices

PIN_IDS = [f"p{i}" for i in range(8)]
TEXTS = {
    "title": ["t0", None, "t2", None, None, "t5", "t6", "  "],
    "description": ["d0", "d1", None, None, None, None, None, None],
    "caption": [None, None, None, "c3", None, None, None, "c7"],
    "queries": [None, ["q1a", "q1b"], None, None, [], None, None, None],
    "annotations": [None, None, None, None, None, None, ["a6"], None],
}
HAS_IMAGE = [True, True, True, False, True, True, True, True]
EDGES = [
    ("p0", "b1"), ("p1", "b1"), ("p2", "b1"), ("p4", "b1"), ("p6", "b1"), ("p7", "b1"), ("px", "b1"),
    ("p1", "b2"), ("p3", "b2"),
    ("p3", "b3"), ("p4", "b3"),
    ("p0", "b4"), ("p2", "b4"),
]  # fmt: skip
TITLES = {"b1": "Red things", "b2": "Blue", "b4": "Lonely"}
SPLITS = {
    "seed": 0,
    "cold_start_pins": ["p6", "p7", "zz"],
    "val_pins": ["p2"],
    "heldout_boards": ["b1", "b3", "b4"],
}


def _build(**kwargs):
    return build_eval_tasks(
        PIN_IDS,
        TEXTS,
        [p for p, _ in EDGES],
        [b for _, b in EDGES],
        TITLES,
        SPLITS,
        has_image=HAS_IMAGE,
        **kwargs,
    )


def _lists(arrays):
    return [a.tolist() for a in arrays]


def test_splits():
    splits, unknown = split_pin_indices(PIN_IDS, SPLITS)
    assert splits["warm"].tolist() == [0, 1, 3, 4, 5]
    assert splits["cold"].tolist() == [6, 7]
    assert unknown == 1


def test_pintext_image_to_text():
    warm = _build()["pintext_i2t"]["warm"]
    assert (warm.query_kind, warm.corpus_kind) == ("image", "text")
    assert warm.corpus_texts == ["t0", "d0", "d1", "q1a, q1b", "c3", "t5"]
    assert warm.corpus_fields == ["title", "description", "description", "queries", "caption", "title"]
    assert warm.corpus_pins.tolist() == [0, 0, 1, 1, 3, 5]
    assert warm.query_pins.tolist() == [0, 1, 5]  # p3 has no image, p4 no text
    assert _lists(warm.relevant) == [[0, 1], [2, 3], [5]]
    assert warm.exclude is None and warm.query_texts is None
    cold = _build()["pintext_i2t"]["cold"]
    assert cold.corpus_texts == ["t6", "a6", "c7"]
    assert cold.query_pins.tolist() == [6, 7]
    assert _lists(cold.relevant) == [[0, 1], [2]]


def test_pintext_text_to_image():
    warm = _build()["pintext_t2i"]["warm"]
    assert (warm.query_kind, warm.corpus_kind) == ("text", "image")
    assert warm.corpus_pins.tolist() == [0, 1, 4, 5]  # pins with an image
    assert warm.query_pins.tolist() == [0, 1, 5]
    assert warm.query_texts == ["t0", "d1", "t5"]  # p1 has no title: its first present field
    assert _lists(warm.relevant) == [[0], [1], [3]]
    cold = _build()["pintext_t2i"]["cold"]
    assert cold.query_texts == ["t6", "c7"]  # p7's blank title is not present
    assert _lists(cold.relevant) == [[0], [1]]


def test_related_pins():
    warm = _build()["related"]["warm"]
    assert (warm.query_kind, warm.corpus_kind) == ("pin", "pin")
    assert warm.corpus_pins.tolist() == [0, 1, 3, 4, 5]
    assert warm.query_pins.tolist() == [0, 1, 3, 4]  # b4 has only p0 in warm; b2 is not held out
    # p0: b1 -> p1, p4; p1: b1 -> p0, p4; p3: b3 -> p4; p4: b1 and b3 -> p0, p1, p3 (corpus positions)
    assert _lists(warm.relevant) == [[1, 3], [0, 3], [3], [0, 1, 2]]
    assert warm.exclude.tolist() == [0, 1, 2, 3]
    cold = _build()["related"]["cold"]
    assert cold.query_pins.tolist() == [6, 7]
    assert _lists(cold.relevant) == [[1], [0]]
    assert cold.exclude.tolist() == [0, 1]


def test_search():
    tasks = _build()
    warm = tasks["search"]["warm"]
    assert (warm.query_kind, warm.corpus_kind) == ("text", "pin")
    assert warm.query_pins is None
    assert warm.query_texts == ["Red things", "Lonely"]
    assert warm.query_boards == ["b1", "b4"]
    assert _lists(warm.relevant) == [[0, 1, 3], [0]]
    assert warm.counts["boards_without_title"] == 1 and warm.counts["edges_unknown_pin"] == 1
    cold = tasks["search"]["cold"]
    assert cold.query_texts == ["Red things"]
    assert _lists(cold.relevant) == [[0, 1]]
    assert cold.counts["boards_without_pins"] == 1  # b4 has no cold pin


def test_relevant_positions_point_back_to_the_query_pin():
    tasks = _build()
    for split in ("warm", "cold"):
        for task in ("pintext_i2t", "pintext_t2i"):
            spec = tasks[task][split]
            for pin, rel in zip(spec.query_pins, spec.relevant):
                assert (spec.corpus_pins[rel] == pin).all()
        related = tasks["related"][split]
        assert (related.corpus_pins[related.exclude] == related.query_pins).all()


def _synthetic(n_pins: int = 60):
    rng = np.random.default_rng(7)
    pin_ids = [f"pin{i}" for i in range(n_pins)]
    texts = {"title": [f"title {i}" for i in range(n_pins)], "queries": [["a", "b"]] * n_pins}
    boards = [f"b{j}" for j in range(12)]
    edges = [(pin_ids[i], boards[j]) for i in range(n_pins) for j in rng.choice(12, size=2, replace=False)]
    splits = {"cold_start_pins": pin_ids[:15], "val_pins": pin_ids[15:20], "heldout_boards": boards[:6]}
    titles = {b: f"board {b}" for b in boards}
    return pin_ids, texts, [p for p, _ in edges], [b for _, b in edges], titles, splits


def test_sampling_is_deterministic_and_bounded():
    data = _synthetic()
    first = build_eval_tasks(*data, max_queries=4, max_pins=6, seed=3)
    again = build_eval_tasks(*data, max_queries=4, max_pins=6, seed=3)
    full = build_eval_tasks(*data, max_queries=1000, max_pins=1000, seed=3)
    for task, by_split in first.items():
        for split, spec in by_split.items():
            assert spec.num_queries <= 4
            assert _lists(spec.relevant) == _lists(again[task][split].relevant)
            if spec.query_pins is not None:
                assert spec.query_pins.tolist() == again[task][split].query_pins.tolist()
                assert list(spec.query_pins) == sorted(spec.query_pins)
    assert len(np.unique(first["pintext_i2t"]["warm"].corpus_pins)) == 6
    assert full["related"]["warm"].num_queries > 4
    # a sampled related query keeps all its neighbors in the (unsampled) split corpus
    sampled, whole = first["related"]["warm"], full["related"]["warm"]
    for pin, rel in zip(sampled.query_pins, sampled.relevant):
        j = whole.query_pins.tolist().index(pin)
        assert rel.tolist() == whole.relevant[j].tolist()


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="'title' has 2 values for 8 pins"):
        build_eval_tasks(PIN_IDS, {"title": ["a", "b"]}, [], [], {}, SPLITS)
    with pytest.raises(ValueError, match=r"pin 'p1' \(row 1\), field 'queries'"):
        build_eval_tasks(PIN_IDS, {"queries": [None, 5] + [None] * 6}, [], [], {}, SPLITS)
    with pytest.raises(ValueError, match="duplicates"):
        build_eval_tasks(["a", "a"], {}, [], [], {}, {})
    with pytest.raises(ValueError, match="heldout_boards"):
        build_eval_tasks(PIN_IDS, TEXTS, [], [], {}, {"heldout_boards": "b1"})


def test_empty_splits_are_left_out():
    tasks = build_eval_tasks(
        PIN_IDS, TEXTS, [], [], {}, {"cold_start_pins": [], "val_pins": [], "heldout_boards": []}
    )
    assert set(tasks) == {"pintext_i2t", "pintext_t2i"}
    assert set(tasks["pintext_i2t"]) == {"warm"}
