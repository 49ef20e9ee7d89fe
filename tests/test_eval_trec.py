"""The TREC run and qrels files re-scored with ranx give our Recall@10, Recall@100, nDCG@10 and MRR@100.

Two models are written: the tiny PinCLIP checkpoint (dense, scored) and BM25 (a ranker: no scores, and
queries it finds nothing for are absent from its run), on splits with duplicate groups, so the excluded
items must be missing from both files for the numbers to agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ranx import Qrels, Run, evaluate
from test_eval_harness import eval_splits

from pinclip.eval.harness import evaluate_checkpoint
from pinclip.eval.trec import file_stem, read_qrels, read_run
from pinclip.train.dataset import load_dataset

METRICS = {"recall@10": "recall@10", "recall@100": "recall@100", "ndcg@10": "ndcg@10", "mrr@100": "mrr"}


@pytest.fixture(scope="module")
def written(tiny_checkpoint, catalog, tmp_path_factory) -> tuple[Path, dict]:
    from pinclip.baselines.bm25 import create_bm25

    out = tmp_path_factory.mktemp("trec")
    dataset = load_dataset(catalog["pins"], catalog["boards"], None)
    models = {"pinclip": tiny_checkpoint, "bm25": create_bm25(out / "bm25-model")}
    results = {name: evaluate_checkpoint(folder, dataset, splits=eval_splits(), quantization=False, progress=False,
                                         trec_dir=out / "trec", name=name) for name, folder in models.items()}
    return out / "trec", results


def cells(result: dict) -> list[tuple[str, str, str]]:
    return [(t, s, r) for t, by_split in result["per_query"].items() for s, by_regime in by_split.items()
            for r in by_regime]


@pytest.mark.parametrize("model", ["pinclip", "bm25"])
def test_ranx_rescores_every_run_file_to_our_numbers(written, model):
    folder, results = written
    result = results[model]
    runs = sorted((folder / model).glob("*.run.gz"))
    assert [p.name for p in runs] == sorted(f"{file_stem(*cell)}.run.gz" for cell in cells(result))
    assert len(runs) == (16 if model == "pinclip" else 8)  # bm25: no PinText, no image regime
    for task, split, regime in cells(result):
        stem = file_stem(task, split, regime)
        qrels = Qrels.from_file(str(folder / "qrels" / f"{stem}.qrels"), kind="trec")
        run = Run.from_file(str(folder / model / f"{stem}.run.gz"), kind="gz")
        scores = evaluate(qrels, run, list(METRICS), return_mean=False, make_comparable=True)
        ranx_ids = list(qrels.keys())  # evaluate's per-query order
        ours = result["per_query"][task][split][regime]
        assert sorted(ranx_ids) == sorted(ours["query_ids"]), stem
        order = [ours["query_ids"].index(q) for q in ranx_ids]
        for theirs, name in METRICS.items():
            np.testing.assert_allclose(scores[theirs], np.asarray(ours[name])[order], atol=1e-9,
                                       err_msg=f"{model} {stem} {theirs}")
            assert result["metrics"][task][split][regime][name] == pytest.approx(float(np.mean(scores[theirs])))


def test_excluded_items_are_in_neither_file(written):
    """A Related Pins query's own duplicate triple, and a Search board's pins of the other split."""
    folder, results = written
    run = read_run(folder / "pinclip" / "related.warm.full.run.gz")
    qrels = read_qrels(folder / "qrels" / "related.warm.full.qrels")
    assert run.keys() == qrels.keys()
    for query, ranked in run.items():
        twins = {f"{query.rsplit('-', 1)[0]}-{k}" for k in range(3)}
        assert not twins & ranked.keys() and not twins & qrels[query].keys()
        assert len(ranked) == 72 - 3  # every other pin is ranked (depth 100 > catalog)
        ordered = list(ranked.values())
        assert ordered == sorted(ordered, reverse=True) and len(set(ordered)) == len(ordered)  # no ties left
    search = read_run(folder / "pinclip" / "search.warm.full.run.gz")
    relevant = read_qrels(folder / "qrels" / "search.warm.full.qrels")
    held = {p for p in eval_splits()["cold_start_pins"] + eval_splits()["val_pins"] if "-circle-" in p}
    assert len(held) == 9  # blue and orange circles are cold, purple ones validation pins
    assert search.keys() == relevant.keys() == {"shape-circle", "color-blue"}
    assert len(search["shape-circle"]) == 72 - 9 and not held & search["shape-circle"].keys()
    assert len(relevant["shape-circle"]) == 18 - 9 and not held & relevant["shape-circle"].keys()
    assert "red-square-0" in search["shape-circle"]  # a cold pin of another board competes in the corpus


def test_a_second_evaluation_in_the_same_folder_leaves_no_stale_file(tiny_checkpoint, catalog, tmp_path):
    """Qrels are rewritten by every evaluation, and `pinclip eval` clears the run files of an earlier one."""
    from pinclip.eval.cli import EvalOptions, evaluate_models

    dataset = load_dataset(catalog["pins"], catalog["boards"], None)
    dataset.splits = eval_splits()
    trec = tmp_path / "trec"
    evaluate_checkpoint(tiny_checkpoint, dataset, tasks=["search"], quantization=False, progress=False, trec_dir=trec)
    evaluate_checkpoint(tiny_checkpoint, dataset, partition="val", tasks=["search"], quantization=False,
                        progress=False, trec_dir=trec)
    assert list(read_qrels(trec / "qrels" / "search.warm.full.qrels")) == ["color-yellow"]  # the val board
    options = EvalOptions(partition="val", regimes=("image",), tasks=("search",), ann=False, progress=False)
    evaluate_models({"pinclip": [tiny_checkpoint]}, dataset, tmp_path, options=options)
    assert sorted(p.name for p in (trec / "pinclip").iterdir()) == ["search.cold.image.run.gz",
                                                                     "search.warm.image.run.gz"]
    assert sorted(p.name for p in (trec / "qrels").iterdir()) == ["search.cold.image.qrels", "search.warm.image.qrels"]
    assert not (trec / "model").exists()
