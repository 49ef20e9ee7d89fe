"""The training queue of `make report`: planned trainings, run side by side, each resumable."""

from __future__ import annotations

import pytest

from pinclip.cli import UserError
from pinclip.config import load_config
from pinclip.experiments import TrainingQueue, make_models, model_dir, recipe_changes, train_once


def _cfg(catalog, out):
    return load_config(preset="tiny", overrides=[f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={out}",
                                                 f"train.cache_dir={out.parent / 'cache'}", "train.steps=2"])


def test_the_queue_plans_only_what_is_missing_then_trains_it_two_at_a_time(catalog, tmp_path):
    base = _cfg(catalog, tmp_path / "run" / "train")
    queue = TrainingQueue()
    planned = make_models(base, tmp_path / "run", ["pinclip", "lit"], seeds=2, trainer=queue.add)
    expected = [model_dir(tmp_path / "run", n, s) / "final" for n in ("pinclip", "lit") for s in (0, 1)]
    assert [p for ps in planned.values() for p in ps] == expected and len(queue.configs) == 4
    assert not any(p.exists() for p in expected)  # planning trains nothing
    queue.run(jobs=2, progress=False)
    assert all((p / "meta.json").is_file() for p in expected) and not queue.configs
    assert (model_dir(tmp_path / "run", "lit", 1) / "train.log").is_file()  # each worker's output in its folder
    again = TrainingQueue()
    make_models(base, tmp_path / "run", ["pinclip", "lit"], seeds=2, trainer=again.add)
    assert not again.configs  # everything is there: nothing to train


def test_a_folder_trained_with_another_recipe_is_moved_aside_and_trained_anew(catalog, tmp_path):
    cfg = _cfg(catalog, tmp_path / "lit")
    first = train_once(cfg, progress=False)
    version = (first / "meta.json").read_text()
    same = _cfg(catalog, tmp_path / "lit")
    same.train.num_threads = 1  # how it runs, not what it learns
    assert recipe_changes(same, tmp_path / "lit") == []
    assert TrainingQueue().add(same) == first and (first / "meta.json").read_text() == version  # reused
    other = _cfg(catalog, tmp_path / "lit")
    other.train.lr = cfg.train.lr / 2  # e.g. configs/tuned.yaml chose another point since
    assert recipe_changes(other, tmp_path / "lit") == [f"train.lr: {cfg.train.lr!r} -> {cfg.train.lr / 2!r}"]
    queue = TrainingQueue()
    queue.add(other)
    assert len(queue.configs) == 1 and not first.exists()  # planned anew, the old training kept aside
    assert (tmp_path / "lit-old" / "final" / "meta.json").read_text() == version
    queue.run(jobs=1, progress=False)
    assert (first / "meta.json").read_text() != version and recipe_changes(other, tmp_path / "lit") == []


def test_a_failed_training_names_its_folder_and_log(catalog, tmp_path):
    cfg = _cfg(catalog, tmp_path / "bad")
    cfg.train.data_dir = str(tmp_path / "missing")
    queue = TrainingQueue()
    queue.add(cfg)
    queue.add(_cfg(catalog, tmp_path / "good"))
    with pytest.raises(UserError, match=r"training .*bad failed: .*train\.log"):
        queue.run(jobs=2, progress=False)


def test_scaling_points_name_their_seed_and_are_judged_on_the_pins_they_trained(catalog, tmp_path):
    from pinclip.eval.tasks import split_pins
    from pinclip.experiments import scaling_runs, scaling_splits
    from pinclip.train.dataset import load_dataset_dir, training_subset

    planned = []
    points = scaling_runs(_cfg(catalog, tmp_path / "run" / "train"), tmp_path / "run", (0.5,), ("steps",),
                          trainer=lambda cfg: planned.append(cfg) or tmp_path / "ckpt")
    assert points == [{"fraction": 0.5, "budget": "steps", "checkpoint": str(tmp_path / "ckpt"), "seed": 0}]
    assert planned[0].train.train_fraction == 0.5 and not (tmp_path / "run" / "scaling").exists()  # planned only
    dataset = load_dataset_dir(catalog["pins"].parent)
    full, half = (split_pins(dataset.pins.pin_ids, scaling_splits(dataset, f, 0), "test") for f in (1.0, 0.5))
    trained = training_subset(dataset.pins, dataset.splits, 0.5, 0)
    assert half["warm"].tolist() == trained.tolist() and set(trained) < set(full["warm"].tolist())
    assert half["cold"].tolist() == full["cold"].tolist()  # the same cold pins at every fraction


def test_the_scaling_curve_judges_a_point_on_its_scaling_splits(tiny_checkpoint, catalog):
    """The tiny model stands in for a run on half the training pins (the code path; which pins query as warm
    is checked on scaling_splits above)."""
    from pinclip.eval.cli import EvalOptions, _scaling_curve
    from pinclip.experiments import scaling_splits
    from pinclip.train.dataset import load_dataset_dir, training_subset

    dataset = load_dataset_dir(catalog["pins"].parent)
    point = {"fraction": 0.5, "budget": "steps", "checkpoint": str(tiny_checkpoint), "seed": 0}
    curve = _scaling_curve([point], dataset, None, EvalOptions(progress=False))
    assert curve["points"][0] is point and 0.0 <= point["pintext_recall@10"] <= 1.0
    trained = {dataset.pins.pin_ids[i] for i in training_subset(dataset.pins, dataset.splits, 0.5, 0)}
    assert not set(scaling_splits(dataset, 0.5, 0)["untrained_pins"]) & trained
    assert set(point["pintext_i2t"]) == {"warm", "cold"}


def test_the_demo_trains_anew_when_its_preset_changed_since_its_model_was_trained(catalog, tmp_path):
    """`pinclip demo` skips its train stage when <run>/train/final exists; a model of another recipe (the preset
    retuned since) is moved aside first, and one of the same recipe is kept."""
    from pinclip.demo import _retire_other_recipe

    run = tmp_path / "run"
    overrides = [f"train.data_dir={catalog['pins'].parent}", f"train.out_dir={run / 'train'}",
                 f"train.cache_dir={run / 'cache'}", "train.steps=2"]
    train_once(load_config(preset="tiny", overrides=overrides), progress=False)
    _retire_other_recipe("tiny", overrides)
    assert (run / "train" / "final" / "meta.json").is_file()  # same recipe: kept
    _retire_other_recipe("tiny", [*overrides[:3], "train.steps=3"])
    assert not (run / "train").exists() and (run / "train-old" / "final" / "meta.json").is_file()
