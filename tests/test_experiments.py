"""The training queue of `make report`: planned trainings, run side by side, each resumable."""

from __future__ import annotations

import pytest

from pinclip.cli import UserError
from pinclip.config import load_config
from pinclip.experiments import TrainingQueue, make_models, model_dir


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


def test_a_failed_training_names_its_folder_and_log(catalog, tmp_path):
    cfg = _cfg(catalog, tmp_path / "bad")
    cfg.train.data_dir = str(tmp_path / "missing")
    queue = TrainingQueue()
    queue.add(cfg)
    queue.add(_cfg(catalog, tmp_path / "good"))
    with pytest.raises(UserError, match=r"training .*bad failed: .*train\.log"):
        queue.run(jobs=2, progress=False)
