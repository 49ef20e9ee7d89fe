"""`pinclip mix`: the weight is chosen on validation by the selection score; the served model follows it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pinclip.eval.mix_cli import choose_weight, served_checkpoint
from pinclip.eval.selection import selection_score


def test_choose_weight_takes_the_best_and_ties_go_to_the_smaller():
    assert choose_weight({0.0: 0.30, 0.25: 0.34, 0.5: 0.33}) == 0.25
    assert choose_weight({0.0: 0.30, 0.5: 0.30}) == 0.0
    with pytest.raises(ValueError):
        choose_weight({})


def test_the_selection_score_leaves_warm_pintext_out():
    cell = lambda v: {"ndcg@10": v}  # noqa: E731
    doc = {"models": {"m": {
        "pintext_i2t": {"warm": {"full": cell(0.9)}, "cold": {"full": cell(0.1)}},
        "related": {"warm": {"full": cell(0.5), "title": None}, "cold": {"image": cell(0.3)}},
        "search": {"cold": {"full": cell(0.2)}}}}}
    out = selection_score(doc, model="m")
    assert out["score"] == pytest.approx((0.1 + 0.5 + 0.3 + 0.2) / 4)
    assert "pintext_i2t/warm/full" not in out["cells"] and len(out["cells"]) == 4


def test_mix_chooses_on_validation_and_writes_the_served_model(tiny_run):
    from pinclip.cli import main
    from pinclip.models.embedder import Embedder

    assert main(["mix", "--run", str(tiny_run), "--weights", "0.5", "--quiet"]) == 0
    record = json.loads((tiny_run / "mix.json").read_text())
    assert set(record["scores"]) == {"0", "0.5"} and record["partition"] == "val"
    assert record["weight"] == choose_weight({float(w): s for w, s in record["scores"].items()})
    served = served_checkpoint(tiny_run)
    if record["weight"] > 0:
        assert served == tiny_run / "mixed" and Embedder.from_checkpoint(served).quant is not None
    else:
        assert served == tiny_run / "train" / "final"


def test_mix_with_the_domain_shift_split_counts_its_validation_cells(catalog, tmp_path):
    """--domain-shift trains PinCLIP on the domain-shift split, mixes it at each weight and scores each weight by
    the selection score over both validation documents (in-domain cells and "domain/" cells)."""
    import shutil

    from pinclip.cli import main
    from pinclip.config import load_config
    from pinclip.experiments import model_dir
    from pinclip.train.trainer import train

    data = tmp_path / "data"
    shutil.copytree(catalog["pins"].parent, data)
    assert main(["data", "split", "--pins", str(data / "pins.parquet"), "--boards", str(data / "boards.parquet"),
                 "--out", str(data / "splits_domain.json"), "--domain-column", "domain", "--domain-frac", "0.3"]) == 0
    run = tmp_path / "run"
    train(load_config(preset="tiny", overrides=[f"train.data_dir={data}", f"train.out_dir={run / 'train'}",
                                                 f"train.cache_dir={run / 'cache'}", "train.steps=4"]), progress=False)
    assert main(["mix", "--run", str(run), "--weights", "0.5", "--quiet"]) == 0  # what `make demo` ran
    judged = (run / "eval-mix-val" / "metrics.json").stat().st_mtime_ns
    assert main(["mix", "--run", str(run), "--weights", "0.5", "--domain-shift", "--quiet"]) == 0
    assert (run / "eval-mix-val" / "metrics.json").stat().st_mtime_ns == judged  # the same models: not judged again
    record = json.loads((run / "mix.json").read_text())
    assert record["domain"] is True
    assert (Path(model_dir(run / "domain", "pinclip", 0)) / "final" / "meta.json").is_file()  # trained on that split
    in_domain = json.loads((run / "eval-mix-val" / "metrics.json").read_text())
    domain = json.loads((run / "eval-mix-domain-val" / "metrics.json").read_text())
    for w, name in (("0", "pinclip"), ("0.5", "pinclip+towers@0.5")):
        both = selection_score(in_domain, domain, model=name)
        assert any(c.startswith("domain/") for c in both["cells"]) and not both["missing"]
        assert record["scores"][w] == pytest.approx(both["score"])
        assert record["in_domain_scores"][w] == pytest.approx(selection_score(in_domain, model=name)["score"])
    assert record["weight"] == choose_weight({float(w): s for w, s in record["scores"].items()})
    assert served_checkpoint(run) == (run / "mixed" if record["weight"] > 0 else run / "train" / "final")


def test_mix_judges_again_when_the_models_differ(tiny_run, tmp_path):
    """The earlier in-domain validation document is reused only for exactly the same models."""
    import shutil

    from pinclip.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "train", run / "train")
    shutil.copytree(tiny_run / "cache", run / "cache")
    assert main(["mix", "--run", str(run), "--weights", "0.5", "--quiet"]) == 0
    first = json.loads((run / "eval-mix-val" / "metrics.json").read_text())
    assert main(["mix", "--run", str(run), "--weights", "0.25", "--quiet"]) == 0
    second = json.loads((run / "eval-mix-val" / "metrics.json").read_text())
    assert set(first["models"]) == {"pinclip", "pinclip+towers@0.5"}
    assert set(second["models"]) == {"pinclip", "pinclip+towers@0.25"}


def test_mix_with_reduced_towers_records_its_dims_and_mixes_every_seed_so(tiny_run, tmp_path):
    """--towers-dims: every judged mix has the reduced towers' half, mix.json says so (a full-size choice is not
    taken for it), and the seeds `pinclip eval --run` mixes at the chosen weight are reduced the same way."""
    import shutil

    from pinclip.cli import main
    from pinclip.eval.mix_cli import mix_done, with_chosen_mix

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "train", run / "train")
    shutil.copytree(tiny_run / "cache", run / "cache")
    final = run / "train" / "final"
    assert main(["mix", "--run", str(run), "--weights", "0.5", "--towers-dims", "3,4", "--quiet"]) == 0
    record = json.loads((run / "mix.json").read_text())
    assert record["towers_dims"] == [3, 4]
    judged = json.loads((run / "eval-mix-val" / "metrics.json").read_text())["meta"]["models"]
    assert judged["pinclip+towers@0.5"]["version"].endswith("-r3x4")
    assert mix_done(run, final, dims=(3, 4)) and not mix_done(run, final)
    record["weight"] = 0.5  # as if 0.5 had won: the other seeds are mixed with the same reduction
    (run / "mix.json").write_text(json.dumps(record))
    models = with_chosen_mix(run, {"pinclip": [final, final]})
    seed1 = json.loads((Path(models["pinclip"][1]) / "meta.json").read_text())
    assert seed1["towers_dims"] == [3, 4] and seed1["weight"] == 0.5
