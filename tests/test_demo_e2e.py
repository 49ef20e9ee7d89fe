"""End to end on the tiny preset: `pinclip demo` runs data → train → eval → embed → index, then the
index serves a query. Random-weight tiny towers: this checks the wiring, not model quality."""

from __future__ import annotations

import json

import numpy as np

from pinclip.cli import main


def test_demo_pipeline_on_tiny_preset(catalog, tmp_path):
    out = tmp_path / "run"
    code = main(["demo", "--out", str(out), "--preset", "tiny", "--data", str(catalog["pins"].parent),
                 "--serve", "0", "--steps", "6"])
    assert code == 0
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings["stages"]) == ["data", "features", "train", "eval", "embed", "index"]
    assert timings["skipped"] == ["data"]  # --data: an existing dataset folder

    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"pinclip", "frozen"} and metrics["scaling"] is None  # the quick eval
    related = metrics["models"]["pinclip"]["related"]["warm"]["recall@10"]
    assert 0.0 <= related <= 1.0
    report = (out / "eval" / "report.md").read_text()
    assert report.count("|") > 20 and "Not in this report: two_tower, fused_no_neighbor" in report

    manifest = json.loads((out / "embed" / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["rows"] for s in manifest["shards"]) == 72

    from pinclip.models.embedder import Embedder
    from pinclip.serve.index import PinIndex

    index = PinIndex.load(out / "index")
    embedder = Embedder.from_checkpoint(out / "train" / "final")
    assert index.meta.model_version == embedder.version
    scores, ids = index.search(embedder.embed_texts(["red circle"], field="queries"), 5)
    assert len(ids[0]) == 5 and np.all(np.diff(scores[0]) <= 1e-6)  # best first
    related_scores, related_ids = index.search_by_id("red-circle-0", 5)
    assert "red-circle-0" not in related_ids


def test_demo_full_eval_resumes_the_run_and_adds_every_baseline(catalog, tmp_path):
    out = tmp_path / "run"
    argv = ["demo", "--out", str(out), "--preset", "tiny", "--data", str(catalog["pins"].parent), "--serve", "0",
            "--steps", "4"]
    assert main(argv) == 0
    trained = (out / "train" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main([*argv, "--full-eval"]) == 0
    assert (out / "train" / "final" / "model.safetensors").stat().st_mtime_ns == trained  # not retrained
    assert json.loads((out / "timings.json").read_text())["skipped"] == ["data", "train", "embed", "index"]
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"pinclip", "two_tower", "fused_no_neighbor", "frozen"}
    assert len(metrics["scaling"]["points"]) == 4
    assert "Not in this report" not in (out / "eval" / "report.md").read_text()
