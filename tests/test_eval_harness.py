"""The evaluation harness and baselines on the tiny checkpoint and the synthetic catalog."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinclip.cli import UserError
from pinclip.config import load_config
from pinclip.eval.baselines import create_frozen, mean_pooled_fields, train_baselines
from pinclip.eval.harness import ModelEncoder, evaluate_checkpoint, prefix
from pinclip.eval.tasks import TASKS
from pinclip.models.text_states import TextStates
from pinclip.train.dataset import load_dataset_dir

METRIC_KEYS = {"recall@1", "recall@10", "recall@50", "recall@100", "hit@10", "queries", "corpus"}


@pytest.fixture(scope="module")
def dataset(catalog):
    return load_dataset_dir(catalog["pins"].parent)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="module")
def evaluation(tiny_checkpoint, dataset, cache_dir):
    return evaluate_checkpoint(tiny_checkpoint, dataset, cache_dir=cache_dir, progress=False)


def _tiny_cfg(catalog, cache_dir):
    return load_config(preset="tiny", overrides=[f"train.data_dir={catalog['pins'].parent}",
                                                 f"train.cache_dir={cache_dir}", "train.steps=2"])


def test_result_has_every_task_split_dim_and_quantization(evaluation):
    assert set(TASKS) <= set(evaluation)
    for task in TASKS:
        assert "warm" in evaluation[task]
        for split, m in evaluation[task].items():
            assert METRIC_KEYS <= set(m), (task, split)
            assert m["queries"] > 0
            for key in ("recall@1", "recall@10", "recall@50", "recall@100", "hit@10"):
                assert 0.0 <= m[key] <= 1.0
            assert m["recall@1"] <= m["recall@10"] <= m["recall@50"] <= m["recall@100"]
            assert evaluation["dims"][32][task][split] == m  # the full dim is the headline
            assert 0.0 <= evaluation["dims"][16][task][split]["recall@10"] <= 1.0
            q = evaluation["quantization"][task][split]
            assert q["fp32"] == m["recall@10"]
            assert all(0.0 <= q[k] <= 1.0 for k in ("int8_global", "int8_per_dim", "ann"))
            assert q["ann_index"] == "flat"  # corpora of the synthetic catalog are under ann_min
    assert set(evaluation["dims"]) == {32, 16}
    # 57 warm pins (72 - 9 cold - 6 val) each query their own image; 3 held-out boards have warm pins
    assert evaluation["pintext_t2i"]["warm"]["queries"] == 57
    assert evaluation["search"]["warm"]["queries"] == 3
    assert evaluation["meta"]["quant"] == "checkpoint"


def test_global_int8_keeps_fp32_recall(evaluation):
    diffs = [abs(q["int8_global"] - q["fp32"]) for by_split in evaluation["quantization"].values()
             for q in by_split.values()]
    assert max(diffs) <= 0.15 and float(np.mean(diffs)) <= 0.05


def _brute_recall10(queries, corpus, relevant, exclude=None):
    """Recall@10 with a plain loop and a stable sort of its own (ties broken by corpus position)."""
    recalls = []
    for i, q in enumerate(queries):
        scores = [float(np.dot(q, c)) for c in corpus]
        order = sorted(range(len(corpus)), key=lambda j: (-scores[j], j))
        if exclude is not None:
            order = [j for j in order if j != exclude[i]]
        recalls.append(len(set(order[:10]) & set(relevant[i])) / len(relevant[i]))
    return sum(recalls) / len(recalls)


def test_search_and_related_match_an_independent_brute_force(evaluation, tiny_checkpoint, dataset):
    """Ground truth rebuilt from the raw tables, embeddings from the model, recall by hand."""
    from pinclip.models.embedder import Embedder

    splits, pins, edges = dataset.splits, dataset.pins, dataset.edges
    not_warm = set(splits["cold_start_pins"]) | set(splits["val_pins"])
    warm = [i for i, p in enumerate(pins.pin_ids) if p not in not_warm]
    encoder = ModelEncoder(tiny_checkpoint)
    encoder.prepare(pins, None, progress=False)
    corpus = encoder._embed(np.array(warm), ("pin",))["pin"]
    members = {b: {int(p) for p, bb in zip(edges.pin_index, edges.board_index) if edges.board_ids[bb] == b}
               for b in sorted(splits["heldout_boards"])}
    position = {pin: j for j, pin in enumerate(warm)}
    boards = [b for b in members if members[b] & set(warm)]
    titles = [edges.board_titles[edges.board_ids.index(b)] for b in boards]
    queries = Embedder(encoder.model, encoder.meta).embed_texts(titles, field="queries")
    relevant = [[position[p] for p in members[b] if p in position] for b in boards]
    expected = _brute_recall10(queries, corpus, relevant)
    assert evaluation["search"]["warm"]["recall@10"] == pytest.approx(expected, abs=1e-9)

    pairs = [(p, b) for b in boards for p in members[b] if p in position and len(members[b] & set(warm)) >= 2]
    query_pins = sorted({p for p, _ in pairs})
    rel = [sorted({position[o] for b in boards for o in members[b] & set(warm) if p in members[b] and o != p})
           for p in query_pins]
    expected = _brute_recall10(corpus[[position[p] for p in query_pins]], corpus, rel,
                               exclude=[position[p] for p in query_pins])
    assert evaluation["related"]["warm"]["queries"] == len(query_pins)
    assert evaluation["related"]["warm"]["recall@10"] == pytest.approx(expected, abs=1e-9)


def test_all_test_treats_every_pin_as_cold_and_every_board_as_held_out(tiny_checkpoint, dataset, cache_dir):
    ev = evaluate_checkpoint(tiny_checkpoint, dataset, all_test=True, cache_dir=cache_dir, ann_min=0,
                             progress=False)
    for task in TASKS:
        assert set(ev[task]) == {"cold"}
    # 72 pins, each with an image and a title, each in boards of >= 2 pins; 34 titled boards
    assert [ev[t]["cold"]["queries"] for t in TASKS] == [72, 72, 72, 34]
    assert ev["related"]["cold"]["corpus"] == 72
    # every pin has a title and annotations; copies 0 and 2 of each (color, shape) a description, copy 0 queries
    assert ev["pintext_i2t"]["cold"]["corpus"] == 72 + 48 + 24 + 72
    q = ev["quantization"]["related"]["cold"]
    assert q["ann_index"].startswith("ivf(nlist=")
    assert abs(q["ann"] - q["int8_global"]) <= 0.05  # tuned to recall@10 >= 0.95 against exact search


def test_prefix_renormalizes():
    np.testing.assert_allclose(prefix(np.array([[3.0, 4.0, 12.0]]), 2), [[0.6, 0.8]])


def test_mean_pooled_fields_of_ragged_states():
    tokens = np.array([[1, 1], [3, 3], [10, 0], [0, 2], [0, 4], [0, 6]], np.float16)
    # pin 0: field 1 = rows 2..3 ; pin 1: field 0 = rows 0..1, field 2 = rows 3..5 (packed out of pin order)
    start = np.array([[-1, 2, -1, -1, -1], [0, -1, 3, -1, -1]])
    length = np.array([[0, 1, 0, 0, 0], [2, 0, 3, 0, 0]], np.int32)
    means, present = mean_pooled_fields(TextStates(tokens, start, length))
    np.testing.assert_allclose(means[0, 1], [10, 0])
    np.testing.assert_allclose(means[1, 0], [2, 2])
    np.testing.assert_allclose(means[1, 2], [0, 4])
    assert present.tolist() == [[False, True, False, False, False], [True, False, True, False, False]]
    assert not means[0, 0].any()


def test_frozen_baseline_scores_graph_tasks_and_leaves_cross_modal_null(catalog, dataset, cache_dir, tmp_path):
    folder = create_frozen(_tiny_cfg(catalog, cache_dir), tmp_path / "baselines" / "frozen")
    assert json.loads((folder / "meta.json").read_text())["kind"] == "frozen"
    ev = evaluate_checkpoint(folder, dataset, cache_dir=cache_dir, progress=False)
    for task in ("pintext_i2t", "pintext_t2i"):
        assert ev[task] == {"warm": None, "cold": None}
        assert "alignment" in ev["notes"][task]
        assert task not in ev["quantization"]
    for task in ("related", "search"):
        assert 0.0 <= ev[task]["warm"]["recall@10"] <= 1.0 and ev[task]["warm"]["queries"] > 0
    assert ev["related"]["warm"]["corpus"] == 57
    assert ev["meta"]["quant"] == "fitted on the eval corpus" and ev["dims"] == {}


def test_two_tower_baseline_is_flagged_and_not_retrained(catalog, dataset, cache_dir, tmp_path):
    cfg = _tiny_cfg(catalog, cache_dir)
    first = train_baselines(cfg, tmp_path, ["two_tower"], steps=1, progress=False)["two_tower"]
    meta = json.loads((first / "meta.json").read_text())
    assert (meta["pin_mode"], meta["query_field"], meta["step"]) == ("image", "title", 1)
    saved = meta["version"]
    again = train_baselines(cfg, tmp_path, ["two_tower"], steps=1, progress=False)["two_tower"]
    assert again == first and json.loads((again / "meta.json").read_text())["version"] == saved
    encoder = ModelEncoder(first)
    encoder.prepare(dataset.pins, cache_dir, progress=False)
    rows = np.arange(5)
    np.testing.assert_allclose(encoder.pin_vectors(rows)["related"], encoder._embed(rows, ("image",))["image"])


def test_user_errors_are_clean(tiny_checkpoint, dataset, tmp_path):
    with pytest.raises(UserError, match="not a PinCLIP checkpoint"):
        evaluate_checkpoint(tmp_path, dataset, progress=False)
    with pytest.raises(UserError, match="not Matryoshka dims"):
        evaluate_checkpoint(tiny_checkpoint, dataset, dims=[7], progress=False)
    with pytest.raises(UserError, match="unknown tasks"):
        evaluate_checkpoint(tiny_checkpoint, dataset, tasks=["pintext"], progress=False)
    with pytest.raises(UserError, match="no evaluation task"):
        evaluate_checkpoint(tiny_checkpoint, dataset, splits={"cold_start_pins": [], "heldout_boards": []},
                            tasks=["related", "search"], progress=False)
