"""pinclip.eval.report on hand-made evaluations (seeds, paired comparisons, the lexical flag, nulls, report.md,
plots), then `pinclip eval` end to end on the tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pinclip.cli import main
from pinclip.eval.report import AGGREGATED, metrics_document, read_val_doc, write_report

Q = 25  # queries per cell: above MIN_QUERIES, so differences can be significant
IDS = [f"q{i}" for i in range(Q)]
ALTERNATING = np.where(np.arange(Q) % 2 == 0, 0.1, -0.1)


def evaluation(values: dict[tuple[str, str, str], np.ndarray | None], quant: float = 0.5) -> dict:
    """One model's evaluate_checkpoint result whose every per-query metric of a cell is `values[cell]`."""
    out = {"metrics": {}, "per_query": {}, "notes": {}, "dims": {32: {"related": {"warm": {"ndcg@10": 0.5}}}},
           "quantization": {"related": {"warm": {"fp32": {"recall@10": quant, "ndcg@10": float("nan")},
                                                 "int8_global": {"recall@10": quant, "ndcg@10": 0.4},
                                                 "int8_per_dim": None, "ann": None}}},
           "meta": {"version": "v1", "kind": "test", "seconds": 1.0, "tasks": {}}}
    for (task, split, regime), v in values.items():
        slot = out["metrics"].setdefault(task, {}).setdefault(split, {})
        if v is None:
            slot[regime] = None
            out["notes"][task] = "cannot score"
            continue
        slot[regime] = {"queries": Q, "corpus": 100, "ceiling@10": 0.9, "ceiling@100": 1.0,
                        **{m: float(v.mean()) for m in AGGREGATED}}
        out["per_query"].setdefault(task, {}).setdefault(split, {})[regime] = {
            **{m: v for m in AGGREGATED}, "ceiling@10": np.full(Q, 0.9), "ceiling@100": np.ones(Q), "query_ids": IDS}
    return out


RELATED, SEARCH, IMAGE = ("related", "warm", "full"), ("search", "cold", "full"), ("related", "warm", "image")


@pytest.fixture(scope="module")
def results() -> dict:
    ones = np.ones(Q)
    pinclip = [evaluation({RELATED: 0.6 * ones, SEARCH: 0.5 * ones, IMAGE: 0.3 * ones}),
               evaluation({RELATED: 0.8 * ones, SEARCH: 0.5 * ones, IMAGE: 0.5 * ones})]  # seed means 0.7, 0.5, 0.4
    lit = [evaluation({RELATED: 0.5 * ones, SEARCH: 0.5 + ALTERNATING, IMAGE: 0.4 * ones})]
    bm25 = [evaluation({RELATED: 0.75 * ones, SEARCH: 0.2 * ones, IMAGE: None})]
    scaling = {"metric": "PinText Recall@10", "points": [
        {"fraction": f, "budget": b, "pintext_recall@10": 0.2 + 0.3 * f, "train_pins": int(100 * f), "steps": 10}
        for f in (0.25, 1.0) for b in ("steps", "epochs")]}
    return {"models": {"bm25": bm25, "lit": lit, "pinclip": pinclip}, "scaling": scaling, "partition": "test",
            "dataset": {"pins": 100, "boards": 10, "edges": 300, "cold_start_pins": 10, "val_pins": 5,
                        "heldout_boards": 4, "val_boards": 1}}


@pytest.fixture(scope="module")
def doc(results) -> dict:
    return metrics_document(results)


def test_models_are_ordered_and_seeds_averaged_per_query(doc):
    assert list(doc["models"]) == ["pinclip", "lit", "bm25"] and doc["primary"] == "ndcg@10"
    cell = doc["models"]["pinclip"]["related"]["warm"]["full"]
    assert cell["seeds"] == 2 and cell["queries"] == Q and cell["corpus"] == 100
    # the seeds score 0.6 and 0.8 on every query; drawing two seeds with replacement gives 0.6, 0.7 or 0.8
    assert cell["ndcg@10"] == pytest.approx(0.7) and cell["ndcg@10_ci"] == pytest.approx([0.6, 0.8])
    assert cell["ndcg@10_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))  # std of the seeds' means
    assert cell["ceiling@10"] == 0.9
    assert doc["models"]["pinclip"]["search"]["cold"]["full"]["ndcg@10_std"] == pytest.approx(0.0)
    lit = doc["models"]["lit"]["search"]["cold"]["full"]
    assert lit["seeds"] == 1 and lit["ndcg@10_std"] == 0.0 and lit["ndcg@10_ci"][0] < 0.5 < lit["ndcg@10_ci"][1]
    assert doc["models"]["bm25"]["related"]["warm"]["image"] is None


def test_paired_comparisons_are_pinclip_minus_each_model(doc):
    vs_lit, vs_bm25 = doc["comparisons"]["lit"], doc["comparisons"]["bm25"]
    related = vs_lit["related"]["warm"]["full"]["ndcg@10"]
    assert related["diff"] == pytest.approx(0.2) and related["significant"] and related["queries"] == Q
    assert related["relative"] == pytest.approx(0.2 / 0.5)
    assert (related["low"], related["high"]) == pytest.approx((0.1, 0.3))  # seeds resampled: 0.6 or 0.8 - 0.5
    image = vs_lit["related"]["warm"]["image"]["ndcg@10"]  # seeds 0.3 and 0.5 against 0.4: -0.1, 0 or +0.1
    assert image["p"] == 1.0 and image["p_holm"] == 1.0 and not image["significant"]
    assert related["p"] == 0.0 and related["p_holm"] == 0.0  # Holm over the three cells of the lit column
    noise = vs_lit["search"]["cold"]["full"]["ndcg@10"]  # lit is 0.5 +0.1 on 13 queries, -0.1 on 12
    assert noise["diff"] == pytest.approx(-0.1 / Q) and noise["low"] < 0 < noise["high"] and not noise["significant"]
    assert vs_bm25["related"]["warm"]["full"]["recall@10"]["diff"] == pytest.approx(-0.05)
    assert "image" not in vs_bm25["related"]["warm"]  # bm25 cannot score it: nothing to compare
    assert set(vs_lit["related"]["warm"]["full"]) == {"ndcg@10", "recall@10", "recall@100"}


def test_lexical_flag_where_bm25_matches_or_beats_every_learned_model(doc):
    assert doc["lexical"]["related"]["warm"]["full"] is True  # 0.75 >= 0.7 and 0.5
    assert doc["lexical"]["search"]["cold"]["full"] is False
    assert "image" not in doc["lexical"]["related"]["warm"]


def test_metrics_json_report_md_plots_and_no_temp_files(results, tmp_path):
    paths = write_report(results, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["metrics.json", "report.md", "per_query.npz", "headline.png", "quantization.png", "scaling.png"])
    assert {k: v.name for k, v in paths.items()}["scaling"] == "scaling.png"
    for name in ("headline", "quantization", "scaling"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    written = json.loads(text)
    assert written["quantization"]["pinclip"]["related"]["warm"]["fp32"]["ndcg@10"] is None  # NaN -> null
    assert written["models"]["bm25"]["related"]["warm"]["image"] is None
    assert written["dims"]["pinclip"] == {"32": {"related": {"warm": {"ndcg@10": 0.5}}}}
    assert written["meta"]["models"]["pinclip"]["seeds"] == 2 and written["scaling"]["points"][0]["fraction"] == 0.25
    with np.load(tmp_path / "per_query.npz") as arrays:
        np.testing.assert_allclose(arrays["pinclip/1/related/warm/full/ndcg@10"], 0.8)
        assert list(arrays["lit/0/search/cold/full/query_ids"]) == IDS
    report = (tmp_path / "report.md").read_text()
    for heading in ("# PinCLIP evaluation — test partition", "## Headline: ndcg@10 [95% CI]",
                    "## PinCLIP minus each model, paired over the same queries (ndcg@10)", "## Every metric",
                    "### Related Pins", "### Search", "## Quantization", "## Matryoshka dims", "## Dataset scaling",
                    "## Notes"):
        assert heading in report, heading
    assert "| Related Pins | warm | full | 25 | 100 | 0.700 ±0.141 [0.60, 0.80] |" in report
    assert "bm25 (lexical)" in report and "n.s." in report
    assert "+0.200 [+0.100, +0.300] |" in report  # significant: no mark
    assert "no validation evaluation was given" in report and "Holm-adjusted" in report
    assert "- bm25, related: cannot score" in report


def test_selection_score_of_every_model_is_in_the_document(doc):
    """pinclip: related warm full 0.7, related warm image 0.4, search cold full 0.5 (no PinText cell here)."""
    pinclip = doc["selection"]["pinclip"]
    assert pinclip["cells"] == ["related/warm/full", "related/warm/image", "search/cold/full"]
    assert pinclip["score"] == pytest.approx((0.7 + 0.4 + 0.5) / 3)
    assert doc["selection"]["bm25"]["missing"] == ["related/warm/image"]


def test_best_other_is_chosen_on_validation_when_a_validation_evaluation_is_given(results, tmp_path):
    """On test, bm25 (0.75) beats lit (0.5) on related warm full; on validation lit (0.9) beats bm25 (0.1)."""
    val_doc = {"partition": "val", "models": {
        "lit": {"related": {"warm": {"full": {"ndcg@10": 0.9}}}},
        "bm25": {"related": {"warm": {"full": {"ndcg@10": 0.1}}}}}}
    on_test = metrics_document(results)["best_other"]["related"]["warm"]["full"]
    assert on_test == {"model": "bm25", "chosen_on": "this partition"}
    chosen = metrics_document(results, val_doc)["best_other"]
    assert chosen["related"]["warm"]["full"] == {"model": "lit", "chosen_on": "validation"}
    assert chosen["search"]["cold"]["full"]["chosen_on"] == "this partition"  # validation lacks the cell
    write_report(results, tmp_path, val_doc=val_doc)
    report = (tmp_path / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| Related Pins | warm | full | 25 | 100 |"))
    assert row.endswith("| +0.200 [+0.100, +0.300] |") and "| lit" in row  # pinclip minus lit, not minus bm25
    assert "chosen on validation where the validation evaluation has the row" in report
    (tmp_path / "run" / "eval-val").mkdir(parents=True)
    (tmp_path / "run" / "eval-val" / "metrics.json").write_text(json.dumps(val_doc))
    assert read_val_doc(tmp_path / "run" / "eval-val") == val_doc and read_val_doc(tmp_path / "none") is None
    assert read_val_doc(tmp_path / "run" / "eval-val" / "metrics.json") == val_doc
    (tmp_path / "test.json").write_text(json.dumps({**val_doc, "partition": "test"}))
    with pytest.raises(ValueError, match="not of validation"):
        read_val_doc(tmp_path / "test.json")


def test_warm_pintext_is_labelled_a_training_fit(tmp_path):
    ones = np.ones(Q)
    cells = {("pintext_i2t", "warm", "full"): 0.9 * ones, ("pintext_i2t", "cold", "full"): 0.3 * ones}
    write_report({"models": {"pinclip": [evaluation(cells)], "lit": [evaluation(cells)]}, "partition": "test"},
                 tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "| PinText image→text | warm: training fit (not a headline) | full |" in report
    assert "| PinText image→text | cold | full |" in report
    assert json.loads((tmp_path / "metrics.json").read_text())["selection"]["pinclip"]["cells"] == \
        ["pintext_i2t/cold/full"]


def test_validation_partition_is_named_in_the_report(results, tmp_path):
    write_report({**results, "partition": "val"}, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# PinCLIP evaluation — val partition") and "validation pins never seen" in report


def test_eval_command_end_to_end(tiny_checkpoint, catalog, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(catalog["pins"].parent), "--quiet"]
    assert main([*argv, "--out", str(out), "--name", "pinclip", "--no-ann"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    assert "selection score (pinclip): " in printed and "test partition: for the record only" in printed
    assert {"metrics.json", "report.md", "per_query.npz", "headline.png", "trec"} <= {p.name for p in out.iterdir()}
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["models"]) == ["pinclip"] and doc["partition"] == "test"
    assert (out / "trec" / "pinclip" / "related.warm.image.run.gz").is_file()
    assert (out / "trec" / "qrels" / "search.cold.title.qrels").is_file()
    assert main([*argv, "--out", str(tmp_path / "val"), "--partition", "val", "--regimes", "image",
                 "--tasks", "related", "--no-trec"]) == 0
    doc = json.loads((tmp_path / "val" / "metrics.json").read_text())
    model = next(iter(doc["models"].values()))
    assert doc["partition"] == "val" and list(model) == ["related"] and list(model["related"]["warm"]) == ["image"]
    assert not (tmp_path / "val" / "trec").exists()
    assert doc["selection"][next(iter(doc["models"]))]["cells"] == ["related/warm/image", "related/cold/image"]


@pytest.mark.parametrize("extra, message", [
    (["--regimes", "full,nope"], "--regimes: unknown nope"),
    (["--tasks", "related,ranking"], "--tasks: unknown ranking"),
    (["--baselines", "bm25"], "--baselines, --seeds, --scaling and --domain-shift need --run"),
    (["--towers-dims", "128,64"], "--towers-dims needs --tower-mix"),
    (["--tower-mix", "0.5", "--towers-dims", "128"], "--towers-dims expects two positive whole numbers"),
    (["--tower-mix", "0.5", "--towers-dims", "a,b"], "--towers-dims expects two whole numbers"),
])
def test_eval_command_bad_options_exit_2(tiny_checkpoint, catalog, tmp_path, capsys, extra, message):
    argv = ["eval", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(catalog["pins"].parent),
            "--out", str(tmp_path), "--quiet"]
    assert main([*argv, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_eval_command_unknown_baseline_exit_2(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path), "--baselines", "bm25,two_tower"]) == 2
    assert "--baselines: unknown two_tower" in capsys.readouterr().err
