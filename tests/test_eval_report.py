"""The evaluation report (metrics.json, report.md, plots) and the `pinclip eval` command."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pinclip.cli import main
from pinclip.eval.report import metrics_document, write_report


def _metrics(r10: float, queries: int = 20) -> dict:
    return {"recall@1": r10 / 2, "recall@10": r10, "recall@50": min(1.0, r10 + 0.2), "recall@100": 1.0,
            "hit@10": min(1.0, r10 + 0.1), "queries": queries, "corpus": 100}


def _evaluation(related: float, pintext: float | None, version: str) -> dict:
    pt = {"warm": None, "cold": None} if pintext is None else {"warm": _metrics(pintext), "cold": _metrics(pintext - 0.1)}
    ev = {"pintext_i2t": pt, "pintext_t2i": pt,
          "related": {"warm": _metrics(related), "cold": _metrics(related - 0.1)},
          "search": {"warm": _metrics(0.5), "cold": {**_metrics(0.4), "recall@50": float("nan")}},
          "dims": {64: {"related": {"warm": _metrics(related)}}, 32: {"related": {"warm": _metrics(related - 0.05)}}},
          "quantization": {"related": {"warm": {"fp32": related, "int8_global": related * 0.995,
                                                "int8_per_dim": related * 0.99, "ann": related * 0.98,
                                                "ann_index": "hnsw(hnsw_m=32, ef_search=16)"}}},
          "notes": {}, "meta": {"version": version, "kind": "pinclip", "checkpoint": f"/ck/{version}", "dims": [64, 32]}}
    if pintext is None:
        ev["notes"] = {"pintext_i2t": "no shared space", "pintext_t2i": "no shared space"}
        ev["dims"], ev["meta"]["kind"] = {}, "frozen"
    return ev


@pytest.fixture(scope="module")
def results() -> dict:
    scaling = {"metric": "PinText Recall@10", "points": [
        {"fraction": f, "train_pins": int(1000 * f), "pintext_recall@10": 0.2 + 0.2 * f,
         "pintext_i2t": {"warm": 0.3, "cold": 0.2}, "pintext_t2i": {"warm": 0.3, "cold": None}} for f in (0.1, 0.5, 1.0)]}
    return {"models": {"frozen": _evaluation(0.45, None, "frozen-1"), "two_tower": _evaluation(0.5, 0.4, "tt-1"),
                       "pinclip": _evaluation(0.6, 0.4, "pc-1")},
            "scaling": scaling, "dataset": {"pins": 1000, "boards": 50, "edges": 3000}}


def test_metrics_json_layout_and_nulls(results, tmp_path):
    paths = write_report(results, tmp_path)
    doc = json.loads(paths["metrics"].read_text())
    assert list(doc["models"]) == ["pinclip", "two_tower", "frozen"]  # canonical order, whatever came in
    assert doc["models"]["pinclip"]["related"]["warm"]["recall@10"] == 0.6
    assert doc["models"]["frozen"]["pintext_i2t"] == {"warm": None, "cold": None}
    assert doc["models"]["pinclip"]["search"]["cold"]["recall@50"] is None  # NaN is not valid JSON
    assert set(doc["quantization"]["pinclip"]["related"]["warm"]) >= {"fp32", "int8_global", "int8_per_dim", "ann"}
    assert doc["dims"]["pinclip"]["32"]["related"]["warm"]["recall@10"] == pytest.approx(0.55)
    assert doc["scaling"]["points"][1]["train_pins"] == 500
    assert doc["meta"]["models"]["two_tower"]["version"] == "tt-1"
    assert doc["meta"]["machine"]["cpu_cores"] >= 1 and doc["meta"]["date"]
    assert doc["meta"]["notes"]["frozen"]["pintext_t2i"] == "no shared space"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json", "quantization.png", "recall_at_k.png", "report.md", "scaling.png"]  # no temporary files


def test_report_tables_show_gain_retention_and_na(results, tmp_path):
    text = write_report(results, tmp_path)["report"].read_text()
    # pinclip 0.6 vs two_tower 0.5 on related warm: +20.0%; cold 0.5 vs 0.4: +25.0%; frozen has no PinText
    assert "| Related Pins | warm | 0.600 | 0.500 | 0.450 | +20.0% |" in text
    assert "| Related Pins | cold | 0.500 | 0.400 | 0.350 | +25.0% |" in text
    assert "| PinText image→text | warm | 0.400 | 0.400 | n/a | +0.0% |" in text
    assert "- frozen, pintext_i2t: no shared space" in text
    # retention: 0.995, 0.99 and 0.98 of fp32
    assert "| pinclip | Related Pins | warm | 0.600 | 0.597 | 0.594 | 0.588 | 99.5% | 99.0% | 98.0% |" in text
    assert "| Related Pins | warm | 0.600 | 0.550 |" in text  # dims table, 64 then 32
    assert "| 50% | 500 | 0.300 | 0.300 | 0.200 | 0.300 | n/a |" in text
    for name in ("recall_at_k.png", "quantization.png", "scaling.png"):
        assert f"]({name})" in text


def test_plots_are_real_pngs(results, tmp_path):
    paths = write_report(results, tmp_path)
    for name in ("recall_at_k", "quantization", "scaling"):
        with Image.open(paths[name]) as img:
            assert img.format == "PNG" and img.width > 400 and img.height > 200


def test_report_without_scaling_or_quantization_has_no_such_plots(results, tmp_path):
    bare = {"models": {m: {**ev, "quantization": {}} for m, ev in results["models"].items()}, "scaling": None}
    bare["models"]["frozen"]["pintext_t2i"] = None  # a task with no split at all still renders
    paths = write_report(bare, tmp_path)
    assert "| PinText text→image | warm | 0.400 | 0.400 | n/a | +0.0% |" in paths["report"].read_text()
    assert "scaling" not in paths and "quantization" not in paths
    assert metrics_document(bare)["scaling"] is None


def test_cli_evaluates_a_checkpoint_and_writes_the_report(tiny_checkpoint, catalog, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(tiny_checkpoint), "--name", "pinclip", "--data-dir",
                 str(catalog["pins"].parent), "--out", str(out), "--quiet", "--max-queries", "20"])
    assert code == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["models"]["pinclip"]["pintext_t2i"]["warm"]["queries"] == 20
    assert str(out / "report.md") in capsys.readouterr().out


def test_cli_all_test_on_a_foreign_catalog_from_tables(tiny_checkpoint, catalog, tmp_path):
    code = main(["eval", "--checkpoint", str(tiny_checkpoint), "--pins", str(catalog["pins"]), "--boards",
                 str(catalog["boards"]), "--all-test", "--no-ann", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    doc = json.loads((tmp_path / "metrics.json").read_text())
    (name,) = doc["models"]  # named after the training folder
    assert set(doc["models"][name]["search"]) == {"cold"} and doc["models"][name]["search"]["cold"]["queries"] == 34
    assert doc["quantization"][name]["search"]["cold"]["ann"] is None


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "X"], "--data-dir"),
    (["eval", "--checkpoint", "X", "--pins", "p.parquet"], "--pins and --boards go together"),
    (["eval", "--checkpoint", "X", "--baselines"], "need --run"),
    (["eval", "--run", "R", "--baselines", "frozen,clip"], "--baselines: unknown clip"),
    (["eval", "--data-dir", "D"], "either --checkpoint"),
    (["eval", "--checkpoint", "A", "--checkpoint", "B", "--name", "a"], "1 --name for 2 --checkpoint"),
])
def test_cli_user_errors_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_missing_checkpoint_is_a_clean_error(catalog, tmp_path, capsys):
    code = main(["eval", "--checkpoint", str(tmp_path / "nope"), "--data-dir", str(catalog["pins"].parent),
                 "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "not a PinCLIP checkpoint" in capsys.readouterr().err


def test_cli_run_trains_baselines_and_scaling_then_reports(tiny_checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train").symlink_to(tiny_checkpoint.parent, target_is_directory=True)
    code = main(["eval", "--run", str(run), "--baselines", "--scaling", "--fractions", "0.5,1.0", "--steps", "1",
                 "--quiet", "--max-queries", "30"])
    assert code == 0
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(doc["models"]) == ["pinclip", "two_tower", "fused_no_neighbor", "frozen"]
    assert doc["models"]["frozen"]["pintext_i2t"]["warm"] is None
    points = doc["scaling"]["points"]
    assert [p["fraction"] for p in points] == [0.5, 1.0]
    assert points[1]["checkpoint"] == str(run / "train" / "final")  # the main model is the 100% point
    assert points[0]["train_pins"] == 28  # round(57 * 0.5)
    assert all((run / "baselines" / n).is_dir() for n in ("frozen", "two_tower", "fused_no_neighbor"))
    assert (run / "eval" / "scaling.png").is_file()
