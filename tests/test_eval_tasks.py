"""pinclip.eval.tasks on a hand-built 13-pin catalog: every query, corpus, relevant and exclude set derived by hand.

Pins (index id: texts; image or not). Field indices: 0 title, 1 description, 4 annotations.
    0 a: "Red Apple", "a shiny fruit"        image   warm, duplicate group {a, b}
    1 b: "red apple!"                        image   warm
    2 c: "Green Pear", ["fruit"]             image   cold
    3 d: "Blue Car"                          image   warm
    4 e: "Blue Truck", "vehicle"             image   warm
    5 f: (no title) "Yellow Bus"             image   cold
    6 g: "Cat"                               image   warm
    7 h: "Dog"                               none    warm
    8 i: "Fish"                              image   validation
    9 j: (no text)                           image   warm
   10 k: "Bird", "A shiny fruit."            image   warm
   11 l: "Cow", ["cat"]                      image   cold
   12 m: (no title) "old tractor"            none    warm
Boards: B1 "fruit bowl" {a, b, c, g} and B2 "vehicles" {d, e, f, h, m} are test boards, B3 "animals"
{g, h, i, k, l} is the validation board, B4 "training board" {a, d, j} stays in the training graph.
Corpus per regime: full = all 13 pins; title = all but m (no image, no title); image = all but h and m,
so pins 8..11 sit at positions 7..10.
"""

from __future__ import annotations

import numpy as np
import pytest

from pinclip.eval.tasks import (
    PINTEXT,
    REGIMES,
    EvalData,
    build_eval_tasks,
    duplicate_group_of,
    group_keys,
    pin_fields,
    regime_mask,
    split_pins,
    warm_half,
)

IDS = list("abcdefghijklm")
TITLE = ["Red Apple", "red apple!", "Green Pear", "Blue Car", "Blue Truck", None, "Cat", "Dog", "Fish", None,
         "Bird", "Cow", None]
DESCRIPTION = ["a shiny fruit", None, None, None, "vehicle", "Yellow Bus", None, None, None, None, "A shiny fruit.",
               None, "old tractor"]
ANNOTATIONS = [None, None, ["fruit"], None, None, None, None, None, None, None, None, ["cat"], None]
HAS_IMAGE = np.array([True] * 7 + [False] + [True] * 4 + [False])
BOARDS = {"B1": ("fruit bowl", "abcg"), "B2": ("vehicles", "defhm"), "B3": ("animals", "ghikl"),
          "B4": ("training board", "adj")}
SPLITS = {"seed": 0, "cold_start_pins": ["c", "f", "l"], "val_pins": ["i"], "heldout_boards": ["B1", "B2", "B3"],
          "val_boards": ["B3"], "duplicate_groups": [["a", "b"]]}


def make_data(splits: dict = SPLITS) -> EvalData:
    edges = [(IDS.index(p), board) for board, (_, members) in BOARDS.items() for p in members]
    texts = {"title": TITLE, "description": DESCRIPTION, "caption": [None] * 13, "queries": [None] * 13,
             "annotations": ANNOTATIONS}
    return EvalData(IDS, texts, HAS_IMAGE, np.array([p for p, _ in edges]), [b for _, b in edges],
                    {b: title for b, (title, _) in BOARDS.items()}, splits)


@pytest.fixture  # per test, not per module: make mutants credits a shared fixture to the first test only
def specs() -> dict:
    return {part: build_eval_tasks(make_data(), partition=part) for part in ("test", "val")}


def as_lists(arrays) -> list[list[int]]:
    return [np.asarray(a).tolist() for a in arrays]


def test_pin_fields_and_regime_mask_by_hand():
    fields = pin_fields(IDS, make_data().texts)
    assert fields[0] == [(0, "Red Apple"), (1, "a shiny fruit")]
    assert fields[2] == [(0, "Green Pear"), (4, "fruit")] and fields[9] == [] and fields[12] == [(1, "old tractor")]
    full, title, image = (regime_mask(fields, r) for r in REGIMES)
    assert np.flatnonzero(full[:, 0]).tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 10, 11]
    assert np.flatnonzero(full[:, 1]).tolist() == [0, 4, 5, 10, 12]
    assert np.flatnonzero(full[:, 4]).tolist() == [2, 11]
    assert (title[:, 0] == full[:, 0]).all() and not title[:, 1:].any()  # the title and nothing else
    assert not image.any()  # no text field reaches a pin in the image regime


def test_splits_and_duplicate_groups_by_hand():
    test, val = (split_pins(IDS, SPLITS, part) for part in ("test", "val"))
    assert test["warm"].tolist() == val["warm"].tolist() == [0, 1, 3, 4, 6, 7, 9, 10, 12]
    assert test["cold"].tolist() == [2, 5, 11] and val["cold"].tolist() == [8]
    assert duplicate_group_of(IDS, SPLITS).tolist() == [0, 0, *range(2, 13)]
    scaled = split_pins(IDS, {**SPLITS, "untrained_pins": ["d", "e", "zz"]}, "test")  # a scaling run left d, e out
    assert scaled["warm"].tolist() == [0, 1, 6, 7, 9, 10, 12] and scaled["cold"].tolist() == [2, 5, 11]


def test_corpus_is_the_whole_catalog_in_every_split(specs):
    corpus = {"full": list("abcdefghijklm"), "title": list("abcdefghijkl"), "image": list("abcdefgijkl")}
    for task in ("related", "search"):
        for regime, ids in corpus.items():
            assert specs["test"][task]["warm"][regime].corpus_ids == ids
            assert specs["test"][task]["cold"][regime].corpus_ids == ids  # cold pins compete with all pins
            assert specs["val"][task]["cold"][regime].corpus_ids == ids


RELATED = {  # (partition, split, regime) -> (query ids, relevant corpus positions, excluded corpus positions)
    ("test", "warm", "full"): ("abdeghm", [[2, 6], [2, 6], [4, 5, 7, 12], [3, 5, 7, 12], [0, 1, 2], [3, 4, 5, 12],
                                           [3, 4, 5, 7]], [[0, 1], [0, 1], [3], [4], [6], [7], [12]]),
    ("test", "warm", "title"): ("abdegh", [[2, 6], [2, 6], [4, 5, 7], [3, 5, 7], [0, 1, 2], [3, 4, 5]],
                                [[0, 1], [0, 1], [3], [4], [6], [7]]),
    ("test", "warm", "image"): ("abdeg", [[2, 6], [2, 6], [4, 5], [3, 5], [0, 1, 2]], [[0, 1], [0, 1], [3], [4], [6]]),
    ("test", "cold", "full"): ("cf", [[0, 1, 6], [3, 4, 7, 12]], [[2], [5]]),
    ("test", "cold", "title"): ("cf", [[0, 1, 6], [3, 4, 7]], [[2], [5]]),
    ("test", "cold", "image"): ("cf", [[0, 1, 6], [3, 4]], [[2], [5]]),
    ("val", "warm", "full"): ("ghk", [[7, 8, 10, 11], [6, 8, 10, 11], [6, 7, 8, 11]], [[6], [7], [10]]),
    ("val", "warm", "image"): ("gk", [[7, 9, 10], [6, 7, 10]], [[6], [9]]),
    ("val", "cold", "full"): ("i", [[6, 7, 10, 11]], [[8]]),
    ("val", "cold", "image"): ("i", [[6, 9, 10]], [[7]]),
}


@pytest.mark.parametrize("cell", sorted(RELATED))
def test_related_pins_by_hand(specs, cell):
    part, split, regime = cell
    spec = specs[part]["related"][split][regime]
    ids, relevant, exclude = RELATED[cell]
    assert spec.query_ids == list(ids) and spec.query_kind == "pin" and spec.corpus_kind == "pin"
    assert [IDS[p] for p in spec.query_pins.tolist()] == list(ids)  # query_pins index the catalog
    assert as_lists(spec.relevant) == relevant
    assert as_lists(spec.exclude) == exclude


def test_related_pins_never_counts_or_ranks_the_duplicate_group(specs):
    for part in ("test", "val"):
        for by_regime in specs[part]["related"].values():
            for spec in by_regime.values():
                for q, pin in enumerate(spec.query_ids):
                    twins = {"a", "b"} if pin in "ab" else {pin}
                    assert {spec.corpus_ids[j] for j in spec.exclude[q]} == twins
                    assert not twins & {spec.corpus_ids[j] for j in spec.relevant[q]}


SEARCH = {  # (partition, split, regime) -> (board ids, relevant positions, excluded positions: the other split)
    ("test", "warm", "full"): (["B1", "B2"], [[0, 1, 6], [3, 4, 7, 12]], [[2], [5]]),
    ("test", "warm", "title"): (["B1", "B2"], [[0, 1, 6], [3, 4, 7]], [[2], [5]]),
    ("test", "warm", "image"): (["B1", "B2"], [[0, 1, 6], [3, 4]], [[2], [5]]),
    ("test", "cold", "full"): (["B1", "B2"], [[2], [5]], [[0, 1, 6], [3, 4, 7, 12]]),
    ("test", "cold", "title"): (["B1", "B2"], [[2], [5]], [[0, 1, 6], [3, 4, 7]]),
    ("test", "cold", "image"): (["B1", "B2"], [[2], [5]], [[0, 1, 6], [3, 4]]),
    ("val", "warm", "full"): (["B3"], [[6, 7, 10]], [[8, 11]]),
    ("val", "warm", "image"): (["B3"], [[6, 9]], [[7, 10]]),
    ("val", "cold", "full"): (["B3"], [[8]], [[6, 7, 10, 11]]),
    ("val", "cold", "image"): (["B3"], [[7]], [[6, 9, 10]]),
}


@pytest.mark.parametrize("cell", sorted(SEARCH))
def test_search_by_hand(specs, cell):
    part, split, regime = cell
    spec = specs[part]["search"][split][regime]
    boards, relevant, exclude = SEARCH[cell]
    assert spec.query_ids == boards and spec.query_texts == [BOARDS[b][0] for b in boards]
    assert spec.query_kind == "text" and spec.query_pins is None
    assert as_lists(spec.relevant) == relevant
    assert as_lists(spec.exclude) == exclude


TEXT_ITEMS = [("a", 0, "Red Apple"), ("a", 1, "a shiny fruit"), ("c", 0, "Green Pear"), ("c", 4, "fruit"),
              ("d", 0, "Blue Car"), ("e", 0, "Blue Truck"), ("e", 1, "vehicle"), ("f", 1, "Yellow Bus"),
              ("g", 0, "Cat"), ("h", 0, "Dog"), ("i", 0, "Fish"), ("k", 0, "Bird"), ("l", 0, "Cow"), ("l", 4, "cat"),
              ("m", 1, "old tractor")]


def test_pintext_image_to_text_by_hand(specs):
    """Distinct (field, normalized text) items: b's 'red apple!' is a's title item, k's description is a's."""
    warm = specs["test"]["pintext_i2t"]["warm"]["full"]
    assert list(specs["test"]["pintext_i2t"]["warm"]) == ["full"]  # PinText has no regimes
    got = [(IDS[p], f, t) for p, f, t in zip(warm.corpus_pins.tolist(), warm.corpus_fields.tolist(), warm.corpus_texts)]
    assert got == TEXT_ITEMS and warm.corpus_kind == "text" and len(set(warm.corpus_ids)) == len(TEXT_ITEMS)
    # warm pins with an image and some text are a, b, d, e, g, k; the test half (warm_half of the group's
    # smallest pin id: a for {a, b}) holds e and g, the validation half a, b, d and k
    assert warm.query_ids == list("eg") and warm.counts == {"candidates": 2}
    assert as_lists(warm.relevant) == [[5, 6], [8]]
    val_warm = specs["val"]["pintext_i2t"]["warm"]["full"]
    assert val_warm.query_ids == list("abdk") and as_lists(val_warm.relevant) == [[0, 1], [0], [4], [1, 11]]
    cold = specs["test"]["pintext_i2t"]["cold"]["full"]
    assert cold.query_ids == list("cfl") and as_lists(cold.relevant) == [[2, 3], [7], [12, 13]]
    val = specs["val"]["pintext_i2t"]["cold"]["full"]
    assert val.query_ids == ["i"] and as_lists(val.relevant) == [[10]]


def test_pintext_text_to_image_by_hand(specs):
    """One query per distinct title (else first field); h's 'Dog' and m's 'old tractor' match no image."""
    warm = specs["test"]["pintext_t2i"]["warm"]["full"]
    assert warm.corpus_ids == list("abcdefgijkl") and warm.corpus_kind == "image"
    # candidate texts 'red apple', 'blue car', 'blue truck', 'cat', 'bird'; the halves of the normalized texts
    # put 'blue truck' and 'bird' on validation
    assert warm.query_ids == list("adg") and warm.query_texts == ["Red Apple", "Blue Car", "Cat"]
    assert warm.query_fields.tolist() == [0] * 3
    assert as_lists(warm.relevant) == [[0, 1], [3], [6]]  # 'red apple' finds a and b
    val_warm = specs["val"]["pintext_t2i"]["warm"]["full"]
    assert val_warm.query_texts == ["Blue Truck", "Bird"] and as_lists(val_warm.relevant) == [[4], [9]]
    cold = specs["test"]["pintext_t2i"]["cold"]["full"]
    assert cold.query_ids == list("cfl") and cold.query_texts == ["Green Pear", "Yellow Bus", "Cow"]
    assert cold.query_fields.tolist() == [0, 1, 0] and as_lists(cold.relevant) == [[2], [5], [10]]


def test_validation_partition_uses_only_validation_boards(specs):
    val = specs["val"]
    assert {b for s in val["search"].values() for spec in s.values() for b in spec.query_ids} == {"B3"}
    assert {b for s in specs["test"]["search"].values() for spec in s.values() for b in spec.query_ids} == {"B1", "B2"}
    members = set("ghikl")
    for by_regime in val["related"].values():
        for spec in by_regime.values():
            assert {spec.corpus_ids[j] for rel in spec.relevant for j in rel} <= members


def test_splits_without_val_boards_judge_both_partitions_on_every_heldout_board():
    splits = {k: v for k, v in SPLITS.items() if k != "val_boards"}
    for part in ("test", "val"):
        spec = build_eval_tasks(make_data(splits), partition=part, tasks=("search",))["search"]["warm"]["full"]
        assert spec.query_ids == ["B1", "B2", "B3"]


def test_query_cap_is_seeded_and_shared_by_regimes():
    a = build_eval_tasks(make_data(), tasks=("related",), max_queries=3, seed=1)["related"]["warm"]
    b = build_eval_tasks(make_data(), tasks=("related",), max_queries=3, seed=1)["related"]["warm"]
    assert a["full"].query_ids == b["full"].query_ids and len(a["full"].query_ids) == 3
    assert set(a["image"].query_ids) <= set(a["full"].query_ids)  # one draw for every regime
    assert a["full"].counts["candidates"] == 7


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="unknown regimes or tasks"):
        build_eval_tasks(make_data(), regimes=("none",))
    data = make_data()
    data.texts = {**data.texts, "title": TITLE[:5]}
    with pytest.raises(ValueError, match="text field 'title' has 5 values for 13 pins"):
        build_eval_tasks(data)
    data = make_data()
    data.texts = {**data.texts, "description": [3] * 13}
    with pytest.raises(ValueError, match=r"pin 'a' \(row 0\), field 'description': not text"):
        build_eval_tasks(data)


@pytest.mark.slow  # builds or trains a model, or builds the demo corpus
def test_model_encoder_regimes_equal_embedding_the_pins_with_those_texts_removed(tiny_checkpoint, catalog):
    """The image regime's pin is the pin embedded from a table with no text at all; the title regime's
    is the pin embedded from a table holding only the titles."""
    import dataclasses

    from pinclip.data.tables import load_pins
    from pinclip.eval.encoders import ModelEncoder

    pins, _ = load_pins(str(catalog["pins"]), check_images=False)
    n = len(pins)
    stripped = {"image": {name: [None] * n for name in pins.texts},
                "title": {name: (values if name == "title" else [None] * n) for name, values in pins.texts.items()}}
    encoder = ModelEncoder(tiny_checkpoint)
    encoder.prepare(pins, None, progress=False)
    masked = {regime: encoder._catalog("pin", regime) for regime in ("full", "title", "image")}
    for regime, texts in stripped.items():
        other = ModelEncoder(tiny_checkpoint)
        other.prepare(dataclasses.replace(pins, texts=texts), None, progress=False)
        np.testing.assert_allclose(masked[regime], other._catalog("pin", "full"), atol=1e-5)
        assert np.abs(masked[regime] - masked["full"]).max() > 1e-3  # the texts did count in the full regime


@pytest.mark.slow  # builds or trains a model, or builds the demo corpus
def test_model_encoder_keeps_catalog_embeddings_on_disk_for_the_same_model_and_inputs_only(
        tiny_checkpoint, catalog, tmp_path):
    """A second encoder of the same checkpoint over the same catalog reads every catalog array back without
    running the model; a changed text is another entry; an unreadable entry is computed again."""
    import dataclasses

    from pinclip.data.tables import load_pins
    from pinclip.eval.encoders import ModelEncoder

    pins, _ = load_pins(str(catalog["pins"]), check_images=False)

    def catalog_arrays(encoder):
        return {**{(w, "full"): encoder._catalog(w) for w in ("image", "text", "text_mask")},
                **{("pin", r): encoder._catalog("pin", r) for r in ("full", "title", "image")}}

    first = ModelEncoder(tiny_checkpoint)
    first.prepare(pins, tmp_path, progress=False)
    expected = catalog_arrays(first)
    folder = first._disk
    assert folder.parent == tmp_path / "catalog" and folder.name.startswith(first.version)
    assert sorted(p.name for p in folder.iterdir()) == ["image+text.npz", "pin-full.npz", "pin-image.npz",
                                                        "pin-title.npz"]

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran although its catalog embeddings were on disk")

    again = ModelEncoder(tiny_checkpoint)
    again.prepare(pins, tmp_path, progress=False)
    again._embed = no_model
    for key, value in catalog_arrays(again).items():
        np.testing.assert_array_equal(value, expected[key])

    titles = list(pins.texts["title"])
    titles[0] = "an entirely different title about harbour cranes"
    changed = ModelEncoder(tiny_checkpoint)
    changed.prepare(dataclasses.replace(pins, texts={**pins.texts, "title": titles}), tmp_path, progress=False)
    assert changed._disk != folder
    assert np.abs(changed._catalog("pin", "title")[0] - expected[("pin", "title")][0]).max() > 1e-3
    np.testing.assert_allclose(changed._catalog("pin", "title")[1:], expected[("pin", "title")][1:], atol=1e-5)

    (folder / "pin-full.npz").write_bytes(b"not a zip file")
    repaired = ModelEncoder(tiny_checkpoint)
    repaired.prepare(pins, tmp_path, progress=False)
    np.testing.assert_allclose(repaired._catalog("pin", "full"), expected[("pin", "full")], atol=1e-6)
    with np.load(folder / "pin-full.npz") as f:
        np.testing.assert_allclose(f["pin"], expected[("pin", "full")], atol=1e-6)

    bare = ModelEncoder(tiny_checkpoint)
    bare.prepare(pins, None, progress=False)
    assert bare._disk is None
    np.testing.assert_allclose(bare._catalog("pin", "full"), expected[("pin", "full")], atol=1e-6)


class TableEncoder:
    """A dense encoder (pinclip.eval.encoders.Encoder) over given pin vectors: the harness ranks with it."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors_of_pins = vectors

    def vectors(self, spec):
        from pinclip.eval.encoders import TaskVectors

        return TaskVectors(self.vectors_of_pins[spec.query_pins], self.vectors_of_pins[spec.corpus_pins])


def test_related_pins_recall_at_10_leaves_out_the_query_and_its_twin():
    """14 pins on a test board, nearly one point of the space (each nearest to itself), 6 distractors far
    away; p00 and p01 are twins with one vector. Without the query (and its twin) in the ranking, the top
    10 are 10 board mates: Recall@10 = 10/12 for a twin (12 mates outside its group), 10/13 for the
    others, and nDCG@10 = 1. A ranking that kept the query would score 9/12 and 9/13."""
    from pinclip.eval.harness import _rank
    from pinclip.eval.metrics import per_query_metrics

    ids = [f"p{i:02d}" for i in range(14)] + [f"d{i}" for i in range(6)]
    rng = np.random.default_rng(0)
    vectors = np.zeros((20, 8))
    vectors[:14, 0], vectors[14:, 1] = 1.0, 1.0
    vectors[:, 2:] = 0.05 * rng.standard_normal((20, 6))
    vectors[1] = vectors[0]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    edges = [(i, "B") for i in range(14)] + [(i, "T") for i in range(14, 20)]
    texts = {"title": [f"pin {i}" for i in ids]}
    splits = {"seed": 0, "cold_start_pins": [], "val_pins": [], "heldout_boards": ["B"],
              "duplicate_groups": [["p00", "p01"]]}
    data = EvalData(ids, texts, np.ones(20, bool), np.array([p for p, _ in edges]), [b for _, b in edges],
                    {"B": "board", "T": "training"}, splits)
    spec = build_eval_tasks(data, tasks=("related",), regimes=("image",))["related"]["warm"]["image"]
    assert spec.query_ids == ids[:14] and len(spec.corpus_ids) == 20
    ranked, _, _ = _rank(TableEncoder(vectors), spec)
    values = per_query_metrics(ranked, spec.relevant, ks=(10,))
    expected = np.array([10 / 12] * 2 + [10 / 13] * 12)
    np.testing.assert_allclose(values["recall@10"], expected)
    np.testing.assert_allclose(values["ndcg@10"], 1.0)
    assert not any(q in row[:10].tolist() for q, row in enumerate(ranked))
    assert 1 not in ranked[0].tolist() and 0 not in ranked[1].tolist()  # the twin is not ranked either


def test_eval_data_from_a_loaded_dataset_matches_the_raw_tables(catalog):
    import pyarrow.parquet as pq

    from pinclip.train.dataset import load_dataset_dir

    dataset = load_dataset_dir(catalog["pins"].parent)
    pins = pq.read_table(catalog["pins"]).to_pylist()
    edges = pq.read_table(catalog["boards"]).to_pylist()
    data = EvalData.from_dataset(dataset)
    assert data.pin_ids == [p["pin_id"] for p in pins] and data.has_image.dtype == bool and data.has_image.all()
    assert data.texts["title"] == [p["title"] for p in pins]
    assert [(data.pin_ids[p], b) for p, b in zip(data.edge_pins.tolist(), data.edge_boards)] == \
        [(e["pin_id"], e["board_id"]) for e in edges]
    assert data.board_titles == {e["board_id"]: e["board_title"] for e in edges}
    assert data.splits == dataset.splits and data.splits["heldout_boards"]
    given = EvalData.from_dataset(dataset, has_image=np.arange(72) % 2, splits=SPLITS)
    assert given.has_image.dtype == bool and given.has_image.sum() == 36 and given.splits is SPLITS


def many_boards(max_pins: int = 40) -> EvalData:
    """Pins p00..p39 with titles; board Bk holds p(2k) (warm) and p(2k+1) (cold); every board is held out."""
    ids = [f"p{i:02d}" for i in range(max_pins)]
    edges = [(i, f"B{i // 2:02d}") for i in range(max_pins)]
    boards = sorted({b for _, b in edges})
    return EvalData(ids, {"title": [f"pin {i}" for i in range(max_pins)]}, np.ones(max_pins, bool),
                    np.array([p for p, _ in edges]), [b for _, b in edges], {b: f"board {b[1:]}" for b in boards},
                    {"seed": 0, "cold_start_pins": ids[1::2], "val_pins": [], "heldout_boards": boards})


# The query draw is part of the protocol: evaluations of two versions compare only if they draw the same queries.
DRAWN = {"pintext_i2t": {"warm": ["p00", "p20", "p30"], "cold": ["p05", "p09", "p19"]},
         "pintext_t2i": {"warm": ["p12", "p32", "p36"], "cold": ["p05", "p11", "p37"]},
         "related": {"warm": ["p02", "p30", "p36"], "cold": ["p03", "p27", "p29"]},
         "search": {"warm": ["B01", "B02", "B14"], "cold": ["B08", "B10", "B18"]}}


def test_query_draws_are_pinned_distinct_and_seeded():
    data = many_boards()
    specs = build_eval_tasks(data, regimes=("full",), max_queries=3)  # seed 0 by default
    assert {t: {s: by["full"].query_ids for s, by in bs.items()} for t, bs in specs.items()} == DRAWN
    other = build_eval_tasks(data, regimes=("full",), max_queries=3, seed=1)
    assert other["related"]["warm"]["full"].query_ids != DRAWN["related"]["warm"]
    for task, by_split in build_eval_tasks(data, regimes=("full",), max_queries=19).items():
        for spec in by_split.values():  # 19 of 20 candidates (warm PinText: of its half): without replacement
            ids = spec["full"].query_ids
            assert len(ids) == len(set(ids)) == min(19, spec["full"].counts["candidates"]) and ids == sorted(ids), task
    assert len(build_eval_tasks(many_boards(2004), tasks=("related",), regimes=("full",))
               ["related"]["warm"]["full"].query_ids) == 1000  # the default cap


def test_warm_pintext_queries_of_validation_and_test_are_disjoint_halves():
    """Warm pins p00, p02, ..., p38; each partition draws its warm PinText queries from its own half only."""
    by_part = {part: build_eval_tasks(many_boards(), partition=part, tasks=PINTEXT) for part in ("val", "test")}
    for task in PINTEXT:
        val, test = (set(by_part[part][task]["warm"]["full"].query_ids) for part in ("val", "test"))
        assert not val & test and len(val | test) == 20, task  # disjoint, and together every warm pin
    i2t = {part: by_part[part]["pintext_i2t"]["warm"]["full"].query_ids for part in ("val", "test")}
    assert all(warm_half(p) == "test" for p in i2t["test"]) and all(warm_half(p) == "val" for p in i2t["val"])
    t2i = by_part["val"]["pintext_t2i"]["warm"]["full"]
    assert all(warm_half(text) == "val" for text in t2i.query_texts)  # "pin 0": the title is its own key


def test_twins_fall_in_one_half_through_the_smallest_id_of_their_group():
    assert group_keys(list("abc"), np.array([0, 0, 2])) == ["a", "a", "c"]
    assert group_keys(["z", "y"], np.array([0, 0])) == ["y", "y"]  # the smallest id, not the first row


def test_every_query_names_its_bootstrap_cluster(specs):
    """Related Pins: the query's first judging board (g is in B1 only among test boards); Search: the board;
    PinText: the query itself."""
    related = specs["test"]["related"]["warm"]["full"]
    assert related.query_ids == list("abdeghm") and related.clusters() == ["B1", "B1", "B2", "B2", "B1", "B2", "B2"]
    assert specs["val"]["related"]["warm"]["full"].clusters() == ["B3", "B3", "B3"]
    search = specs["test"]["search"]["cold"]["full"]
    assert search.clusters() == search.query_ids == ["B1", "B2"]
    i2t = specs["test"]["pintext_i2t"]["cold"]["full"]
    assert i2t.query_clusters is None and i2t.clusters() == ["c", "f", "l"]


def test_every_spec_names_its_task_split_regime_and_kinds(specs):
    kinds = {"pintext_i2t": ("image", "text"), "pintext_t2i": ("text", "image"), "related": ("pin", "pin"),
             "search": ("text", "pin")}
    counts = {("pintext_i2t", "warm"): 2, ("pintext_i2t", "cold"): 3, ("pintext_t2i", "warm"): 3,
              ("pintext_t2i", "cold"): 3, ("related", "warm"): 7, ("related", "cold"): 2}
    for task, by_split in specs["test"].items():
        for split, by_regime in by_split.items():
            for regime, spec in by_regime.items():
                assert (spec.task, spec.split, spec.regime) == (task, split, regime)
                assert (spec.query_kind, spec.corpus_kind) == kinds[task]
                expected = {"candidates": 2, "boards_without_title": 0} if task == "search" else \
                    {"candidates": counts[task, split]}
                assert spec.counts == expected
                assert all(r.dtype == np.int64 for r in spec.relevant) and spec.corpus_pins.dtype == np.int64
                if spec.query_kind != "text" or task == "pintext_t2i":
                    assert len(spec.query_pins) == spec.num_queries and spec.query_pins.dtype == np.int64
    t2i = specs["test"]["pintext_t2i"]["warm"]["full"]
    assert t2i.query_fields.tolist() == [0] * t2i.num_queries and len(t2i.corpus_pins) == 11


def test_missing_fields_nan_texts_untitled_boards_and_empty_splits():
    texts = {"title": ["apple", float("nan"), None], "annotations": [None, ["pear"], ["fig"]]}  # no other field
    assert pin_fields(["a", "b", "c"], texts) == [[(0, "apple")], [(4, "pear")], [(4, "fig")]]
    assert regime_mask(pin_fields(["a", "b", "c"], texts), "full").dtype == bool
    data = make_data({**SPLITS, "val_pins": [], "heldout_boards": [*SPLITS["heldout_boards"], "B9"]})
    data.board_titles = {**data.board_titles, "B2": None, "B9": "nine"}  # an untitled board; a board without pins
    specs = build_eval_tasks(data, partition="test")
    search = specs["search"]["warm"]["full"]
    assert search.query_ids == ["B1"] and search.counts == {"candidates": 2, "boards_without_title": 1}
    val = build_eval_tasks(data, partition="val", tasks=("search", "related"))
    assert "cold" not in val["search"] and "cold" not in val["related"]  # no validation pin: no cold split


def test_inconsistent_catalog_is_rejected():
    """Repeated pin ids, a has_image of the wrong length and a splits entry that is not a list of ids would
    silently misalign queries with pins: each is refused with a message naming the problem."""
    data = make_data()
    data.pin_ids = [*IDS[:-1], "a"]  # m renamed to a second "a"
    with pytest.raises(ValueError, match="^pin_ids contain duplicates$"):
        build_eval_tasks(data)
    data = make_data()
    data.has_image = HAS_IMAGE[:12]
    with pytest.raises(ValueError, match=r"^has_image has shape \(12,\), expected \(13,\)$"):
        build_eval_tasks(data)
    with pytest.raises(ValueError, match=r"^splits\['val_pins'\] must be a list of pin ids, got str$"):
        split_pins(IDS, {**SPLITS, "val_pins": "i"}, "val")
