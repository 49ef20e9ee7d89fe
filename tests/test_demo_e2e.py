"""End to end on the tiny preset: `pinclip demo` runs data → train → eval → embed → index, then the
index serves a query. Random-weight tiny towers: this checks the wiring, not model quality."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from ranking import brute_force

from pinclip.cli import main
from pinclip.eval.mix_cli import chosen_weight, served_checkpoint


def related_image_recall(catalog, checkpoint) -> float:
    """Related Pins Recall@10, warm split, image regime, from the raw tables and the Embedder: queries are
    warm pins of a held-out board, relevant their board mates, the query itself not ranked."""
    from pinclip.models.embedder import Embedder

    pins = pq.read_table(catalog["pins"]).to_pylist()
    ids = [p["pin_id"] for p in pins]
    splits = json.loads(catalog["splits"].read_text())
    held = set(splits["cold_start_pins"]) | set(splits["val_pins"])
    boards = [{ids.index(e["pin_id"]) for e in pq.read_table(catalog["boards"]).to_pylist() if e["board_id"] == b}
              for b in splits["heldout_boards"]]
    queries = [i for i in range(len(ids)) if ids[i] not in held and any(i in m for m in boards)]
    relevant = [set().union(*(m for m in boards if i in m)) - {i} for i in queries]
    images = [Image.open(catalog["pins"].parent / p["image"]) for p in pins]
    vectors = Embedder.from_checkpoint(checkpoint).embed_pins([{"image": img} for img in images])
    return float(np.mean(brute_force(vectors[queries], vectors, relevant, [{i} for i in queries])["recall@10"]))


def test_demo_pipeline_on_tiny_preset(catalog, tmp_path):
    out = tmp_path / "run"
    code = main(["demo", "--out", str(out), "--preset", "tiny", "--data", str(catalog["pins"].parent),
                 "--serve", "0", "--steps", "6"])
    assert code == 0
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings["stages"]) == ["data", "features", "train", "mix", "eval", "embed", "index"]
    assert timings["skipped"] == ["data"]  # --data: an existing dataset folder

    weight = chosen_weight(out)  # the towers' weight chosen on validation (0: PinCLIP alone is served)
    served = served_checkpoint(out)
    assert served == (out / "mixed" if weight > 0 else out / "train" / "final")
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    mixed = {"pinclip_no_mix"} if weight > 0 else set()
    assert set(metrics["models"]) == {"pinclip", "frozen", "bm25"} | mixed and metrics["scaling"] is None  # quick eval
    related = metrics["models"]["pinclip"]["related"]["warm"]["image"]
    assert related["recall@10"] == pytest.approx(related_image_recall(catalog, served), abs=1e-6)
    report = (out / "eval" / "report.md").read_text()
    assert report.count("|") > 20 and "## Headline: ndcg@10 [95% CI]" in report
    assert (out / "eval" / "trec" / "bm25" / "search.cold.full.run.gz").is_file()

    manifest = json.loads((out / "embed" / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["rows"] for s in manifest["shards"]) == 72

    from pinclip.models.embedder import Embedder
    from pinclip.serve.index import PinIndex

    index = PinIndex.load(out / "index")
    embedder = Embedder.from_checkpoint(served)
    assert index.meta.model_version == embedder.version
    scores, ids = index.search(embedder.embed_texts(["red circle"], field="queries"), 5)
    assert len(ids[0]) == 5 and np.all(np.diff(scores[0]) <= 1e-6)  # best first
    related_scores, related_ids = index.search_by_id("red-circle-0", 5)
    assert "red-circle-0" not in related_ids


def test_demo_full_eval_resumes_the_run_and_adds_every_baseline(catalog, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(catalog["pins"].parent, data)
    assert main(["data", "split", "--pins", str(data / "pins.parquet"), "--boards", str(data / "boards.parquet"),
                 "--domain-column", "domain", "--domain-frac", "0.3", "--out", str(data / "splits_domain.json")]) == 0
    out = tmp_path / "run"
    argv = ["demo", "--out", str(out), "--preset", "tiny", "--data", str(data), "--serve", "0", "--steps", "4"]
    assert main(argv) == 0
    trained = (out / "train" / "final" / "model.safetensors").stat().st_mtime_ns
    assert main([*argv, "--full-eval", "--scaling"]) == 0
    assert (out / "train" / "final" / "model.safetensors").stat().st_mtime_ns == trained  # not retrained
    assert json.loads((out / "timings.json").read_text())["skipped"] == ["data", "train", "mix", "embed", "index"]
    assert json.loads((out / "eval-val" / "metrics.json").read_text())["partition"] == "val"
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    unmixed = ["pinclip_no_mix"] if chosen_weight(out) > 0 else []
    assert list(metrics["models"]) == ["pinclip", *unmixed, "lit", "lit_neighbor", "fused_no_neighbor", "frozen", "bm25"]
    seeds = {name: info["seeds"] for name, info in metrics["meta"]["models"].items()}
    assert seeds == {"pinclip": 3, **{m: 3 for m in unmixed}, "lit": 3, "lit_neighbor": 3, "fused_no_neighbor": 3,
                     "frozen": 1, "bm25": 1}
    assert len(metrics["scaling"]["points"]) == 8  # 4 shares of the training pins x equal steps, equal epochs
    report = (out / "eval" / "report.md").read_text()
    assert {c["chosen_on"] for by_split in metrics["best_other"].values() for by_regime in by_split.values()
            for c in by_regime.values()} == {"validation"}  # the best other of every row, chosen on validation
    assert "## PinCLIP minus each model" in report and "## Dataset scaling" in report
    domain = json.loads((out / "eval-domain" / "metrics.json").read_text())
    # every trained model trained again on the split that holds shapes out, beside the untrained baselines
    assert set(domain["models"]) == {"pinclip", "lit", "lit_neighbor", "fused_no_neighbor", "frozen", "bm25",
                                     *unmixed}
    assert (out / "domain" / "baselines" / "lit_neighbor" / "final" / "meta.json").is_file()
    # run again: every evaluation already judged the served model beside these models, so nothing is judged twice
    report_written = (out / "eval" / "metrics.json").stat().st_mtime_ns
    assert main([*argv, "--full-eval", "--scaling"]) == 0
    assert json.loads((out / "timings.json").read_text())["skipped"] == [
        "data", "train", "mix", "mix-domain", "eval-val", "eval", "embed", "index"]
    assert (out / "eval" / "metrics.json").stat().st_mtime_ns == report_written
