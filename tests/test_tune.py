"""`pinclip tune`: one grid for every trained model, points that do not apply skipped, the best point by the
validation selection score, the committed choice read back by the experiments."""

from __future__ import annotations

import json

import pytest
import yaml

from pinclip.config import load_config
from pinclip.tune import TUNE_GRID, choose, plan, tune_table, tuned_overrides

POINTS = {p.name: p for p in TUNE_GRID}


def test_the_plan_skips_points_a_recipe_does_not_have(tmp_path):
    base = load_config(preset="tiny")
    configs = plan(base, tmp_path, ["pinclip", "lit", "fused_no_neighbor"],
                   [POINTS["base"], POINTS["lr-half"], POINTS["neighbor-2"], POINTS["pin-text-1"]])
    assert sorted(configs) == sorted([
        ("pinclip", "base"), ("pinclip", "lr-half"), ("pinclip", "neighbor-2"), ("pinclip", "pin-text-1"),
        ("lit", "base"), ("lit", "lr-half"),  # lit: no graph terms, no fused pass
        ("fused_no_neighbor", "base"), ("fused_no_neighbor", "lr-half"), ("fused_no_neighbor", "pin-text-1")])
    lit = configs[("lit", "lr-half")]
    assert lit.model.pin_mode == "late" and lit.train.lr == 2.5e-4 and lit.train.backbone_lr == 2.5e-5
    assert configs[("pinclip", "neighbor-2")].loss.neighbor_weight == 2.0
    faster = load_config(preset="tiny", overrides=["train.lr=0.001", "train.backbone_lr=0.0001"])
    doubled = plan(faster, tmp_path, ["lit"], [POINTS["lr-double"]])[("lit", "lr-double")]
    assert (doubled.train.lr, doubled.train.backbone_lr) == (0.002, 0.0002)  # relative to the recipe's rates
    assert configs[("pinclip", "lr-half")].train.out_dir == str(tmp_path / "tune" / "pinclip" / "lr-half")
    # the base point is each model's seed-0 training of the report: trained once, not twice
    assert configs[("pinclip", "base")].train.out_dir == str(tmp_path / "train")
    assert configs[("lit", "base")].train.out_dir == str(tmp_path / "baselines" / "lit")


def test_choose_takes_each_models_best_point_and_ties_go_to_the_earlier_point():
    chosen = choose({("lit", "base"): 0.30, ("lit", "lr-half"): 0.32, ("lit", "lr-double"): 0.32,
                     ("pinclip", "base"): 0.40, ("pinclip", "steps-600"): None})
    assert chosen["lit"]["point"] == "lr-half" and chosen["lit"]["score"] == 0.32
    assert chosen["pinclip"]["point"] == "base" and chosen["pinclip"]["scores"]["steps-600"] is None
    table = tune_table(chosen, {"lit@lr-half": 12.0})
    assert "| lit | **lr-half** | 0.3200 | 12 |" in table and "| pinclip | steps-600 | n/a | n/a |" in table


def test_committed_tuned_overrides_reach_the_baselines_training_config(tmp_path, monkeypatch):
    import pinclip.tune as tune
    from pinclip.experiments import model_config

    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("lit:\n  point: lr-half\n  overrides: {train: {lr: 0.00025}}\n")
    assert tuned_overrides("lit", tuned) == {"train": {"lr": 0.00025}} and tuned_overrides("pinclip", tuned) == {}
    monkeypatch.setattr(tune, "TUNED_FILE", tuned)
    base = load_config(preset="tiny")
    assert model_config(base, tmp_path, "lit", 0).train.lr == 0.00025
    assert model_config(base, tmp_path, "lit", 0, tuned=False).train.lr == base.train.lr


def test_tune_trains_every_point_judges_it_on_validation_and_writes_the_choice(tiny_run):
    from pinclip.cli import main

    assert main(["tune", "--run", str(tiny_run), "--models", "pinclip,lit", "--points", "base,lr-half,neighbor-2",
                 "--jobs", "1", "--quiet"]) == 0
    record = json.loads((tiny_run / "tune" / "chosen.json").read_text())
    assert record["partition"] == "val"
    assert set(record["chosen"]["pinclip"]["scores"]) == {"base", "lr-half", "neighbor-2"}
    assert set(record["chosen"]["lit"]["scores"]) == {"base", "lr-half"}  # no graph terms in lit
    from pinclip.eval.cli import run_config

    base = run_config(tiny_run)
    for model, entry in record["chosen"].items():
        assert entry["score"] == max(s for s in entry["scores"].values() if s is not None)
        # the value of every setting the model's sweep changed, at its chosen point (base: the recipe's own)
        factor = {"base": 1.0, "lr-half": 0.5, "neighbor-2": 1.0}[entry["point"]]
        expected = {"train": {"lr": base.train.lr * factor, "backbone_lr": base.train.backbone_lr * factor}}
        if model == "pinclip":
            expected["loss"] = {"neighbor_weight": 2.0 if entry["point"] == "neighbor-2" else base.loss.neighbor_weight}
        assert entry["overrides"] == expected  # factors of 2: exact in floating point
    metrics = json.loads((tiny_run / "tune" / "eval-val" / "metrics.json").read_text())
    assert metrics["partition"] == "val" and set(metrics["models"]) == {"pinclip@base", "pinclip@lr-half",
                                                                        "pinclip@neighbor-2", "lit@base", "lit@lr-half"}
    assert (tiny_run / "tune" / "lit" / "lr-half" / "final" / "meta.json").is_file()
    written = tiny_run / "tune" / "tuned.yaml"  # what make tune commits as configs/tuned.yaml
    assert set(yaml.safe_load(written.read_text())) == {"lit"}  # PinCLIP's choice is its preset
    assert tuned_overrides("lit", written) == record["chosen"]["lit"]["overrides"]
    assert not (tiny_run / "tune" / "pinclip" / "base").exists()  # the run's own model is the base point
    assert (tiny_run / "baselines" / "lit" / "final" / "meta.json").is_file()
    assert "**" in (tiny_run / "tune" / "tune.md").read_text()
    with pytest.raises(SystemExit):
        main(["tune"])  # --run is required


def test_tune_with_the_domain_shift_split_counts_its_validation_cells(catalog, tmp_path, capsys):
    """--domain-shift trains every point on the domain-shift split too, and each point's score is the selection
    score over both validation documents; the in-domain score is kept beside it."""
    import shutil

    from pinclip.cli import main
    from pinclip.eval.selection import selection_score
    from pinclip.train.trainer import train

    data = tmp_path / "data"
    shutil.copytree(catalog["pins"].parent, data)
    run = tmp_path / "run"
    train(load_config(preset="tiny", overrides=[f"train.data_dir={data}", f"train.out_dir={run / 'train'}",
                                                 f"train.cache_dir={run / 'cache'}", "train.steps=4"]), progress=False)
    assert main(["tune", "--run", str(run), "--models", "lit", "--points", "base", "--domain-shift", "--quiet"]) != 0
    assert "splits_domain.json not found" in capsys.readouterr().err  # a clear error before any training
    assert not (run / "baselines").exists()
    assert main(["data", "split", "--pins", str(data / "pins.parquet"), "--boards", str(data / "boards.parquet"),
                 "--out", str(data / "splits_domain.json"), "--domain-column", "domain", "--domain-frac", "0.3"]) == 0
    assert main(["tune", "--run", str(run), "--models", "pinclip,lit", "--points", "base,lr-half", "--domain-shift",
                 "--jobs", "1", "--quiet"]) == 0
    record = json.loads((run / "tune" / "chosen.json").read_text())
    assert record["domain"] is True
    in_domain = json.loads((run / "tune" / "eval-val" / "metrics.json").read_text())
    domain = json.loads((run / "tune" / "eval-domain-val" / "metrics.json").read_text())
    assert domain["partition"] == "val"
    for model in ("pinclip", "lit"):
        for point in ("base", "lr-half"):
            name = f"{model}@{point}"
            assert (run / "tune-domain" / model / point / "final" / "meta.json").is_file()
            both = selection_score(in_domain, domain, model=name)
            assert any(c.startswith("domain/") for c in both["cells"]) and not both["missing"]
            assert record["chosen"][model]["scores"][point] == pytest.approx(both["score"])
            assert record["in_domain_scores"][name] == pytest.approx(selection_score(in_domain, model=name)["score"])
        entry = record["chosen"][model]
        assert entry["score"] == max(entry["scores"].values())
    assert "in domain only" in (run / "tune" / "tune.md").read_text()
