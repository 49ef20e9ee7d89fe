"""The stage machinery of `pinclip demo` and `pinclip run`: timed stages, skipped when their output is there.

Each stage is a public `pinclip` command called in-process; its wall time goes to <out>/timings.json
({"stages": {name: seconds}, "skipped": [names whose output was already there], "training":
{"steps", "chosen_step", "stopped_step"}}), rewritten atomically after every stage. A stage skipped
on a resumed run keeps the time it took when it ran. The stages after training are the same for both commands:

    embed  pinclip embed        -> <out>/embed  (skipped when complete for the final model's version)
    index  pinclip index build  -> <out>/index  (skipped when built for that version)
    serve  pinclip serve           http://127.0.0.1:<port> (only when asked)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pinclip.cli import UserError, main


class Timings:
    """Stage wall times, rewritten atomically to <out>/timings.json after every stage."""

    def __init__(self, out: Path) -> None:
        self.path, self.stages, self.skipped, self.training = out / "timings.json", {}, [], {}
        self.previous = _read_json(self.path).get("stages") or {}  # what an earlier run of these stages took

    def save(self) -> None:
        tmp = self.path.with_name(".timings.json.tmp")
        record = {"stages": self.stages, "skipped": self.skipped, **({"training": self.training} if self.training
                                                                       else {})}
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, self.path)

    def stage(self, name: str, fn: Callable[[], int], done: bool = False) -> None:
        """Run stage `name` (fn returns an exit code) unless `done` (its output is already there)."""
        print(f"\n=== {name} ===" + (" (already done)" if done else ""), flush=True)
        start = time.perf_counter()
        code = 0 if done else fn()
        self.stages[name] = round(time.perf_counter() - start, 1)
        if done:
            self.skipped.append(name)
            if name == "train" and "features" in self.previous:
                self.stages = {**{k: v for k, v in self.stages.items() if k != "train"},
                               "features": self.previous["features"], "train": self.stages["train"]}
            self.stages[name] = self.previous.get(name, self.stages[name])
        self.save()
        if code:
            raise UserError(f"stage '{name}' failed (exit code {code})")

    def split_features(self, final: Path) -> None:
        """Report the training stage's feature-cache pass (from the checkpoint's meta) as its own stage,
        just before "train"."""
        if "train" in self.skipped:
            return
        try:
            features = float(json.loads((final / "meta.json").read_text()).get("features_seconds", 0.0))
        except (OSError, ValueError, TypeError):
            return
        features = min(round(features, 1), self.stages["train"])
        stages = {}
        for name, seconds in self.stages.items():
            if name == "train":
                stages["features"], seconds = features, round(seconds - features, 1)
            stages[name] = seconds
        self.stages = stages
        self.save()

    def record_training(self, final: Path) -> None:
        """The final checkpoint's steps: trained, chosen by validation, stopped at (early stopping)."""
        meta = _read_json(final / "meta.json")
        self.training = {key: meta[key] for key in ("steps", "chosen_step", "stopped_step", "best_val_recall@10")
                         if key in meta}
        if "chosen_step" in meta:
            print(f"training: final/ is step {meta['chosen_step']} (validation's choice) of the "
                  f"{meta.get('stopped_step', meta.get('steps'))} steps trained")
        self.save()

    def print_summary(self) -> None:
        print("\n=== done ===")
        for name, seconds in self.stages.items():
            print(f"  {name:<8} {seconds:8.1f} s" + ("  (already done)" if name in self.skipped else ""))
        print(f"  total    {sum(self.stages.values()):8.1f} s")


def model_version(final: Path) -> str | None:
    """The version of the checkpoint at `final` (None when it is not there)."""
    try:
        return json.loads((final / "meta.json").read_text()).get("version")
    except (OSError, ValueError):
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def embeddings_done(embed_dir: Path, version: str | None) -> bool:
    """A complete embedding run of this model version is in embed_dir."""
    manifest = _read_json(embed_dir / "manifest.json")
    return version is not None and manifest.get("complete") is True and manifest.get("model_version") == version


def index_done(index_dir: Path, version: str | None) -> bool:
    """An index over this model version's embeddings is in index_dir (index.json is written last)."""
    return version is not None and _read_json(index_dir / "index.json").get("model_version") == version


def eval_done(folder: Path, served: str | None, names: Sequence[str], seeds: int = 1, partition: str = "test",
              scaling: bool = False) -> bool:
    """An evaluation in `folder` (metrics.json) already judged the served model (version `served`, as "pinclip")
    on `partition` beside every model of `names`, the trained ones with at least `seeds` seeds (and, with
    `scaling`, the scaling curve): a resumed `make report` does not judge them all again."""
    from pinclip.baselines import BASELINES

    doc = _read_json(folder / "metrics.json")
    models = (doc.get("meta") or {}).get("models") or {}
    if served is None or doc.get("partition") != partition or (models.get("pinclip") or {}).get("version") != served:
        return False
    if scaling and not (doc.get("scaling") or {}).get("points"):
        return False
    trained = {n for n in names if n == "pinclip" or (n in BASELINES and BASELINES[n].trained)}
    return all(n in models and int(models[n].get("seeds") or 0) >= (seeds if n in trained else 1) for n in names)


def retire_stale(folder: Path, record: str, version: str | None) -> Path | None:
    """Move aside a run's embed or index folder that holds another model version's output (its `record` file,
    manifest.json or index.json, names it), to <folder>-<that version>: the run now serves another model (e.g.
    `make report` chose another towers' weight than `make demo`), and the old vectors are kept, not overwritten.
    A folder of this version, or one without such a record, is left as it is. Returns the new place, or None."""
    old = _read_json(folder / record).get("model_version")
    if version is None or not old or old == version:
        return None
    target = move_aside(folder, old)
    print(f"{folder} held the output of {old}; the run now serves {version}: moved to {target}")
    return target


def move_aside(folder: Path, tag: str) -> Path:
    """Rename folder to <folder>-<tag> (or <folder>-<tag>-N, the first free name), keeping what it holds."""
    target = folder.with_name(f"{folder.name}-{tag}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}-{tag}-{n}")
    folder.rename(target)
    return target


def embed_and_index(timings: Timings, out: Path, final: Path, pins: Path, cache: Path) -> None:
    """The embed and index stages over `pins` with the model at `final` (the output of a model the run no longer
    serves is moved aside first, retire_stale)."""
    version = model_version(final)
    embed, index = out / "embed", out / "index"
    retire_stale(embed, "manifest.json", version)
    retire_stale(index, "index.json", version)
    timings.stage("embed", lambda: main(["embed", "--checkpoint", str(final), "--pins", str(pins), "--out", str(embed),
                                         "--cache-dir", str(cache)]), done=embeddings_done(embed, version))
    timings.stage("index", lambda: main(["index", "build", "--embeddings", str(embed), "--out", str(index)]),
                  done=index_done(index, version))


def serve(out: Path, final: Path, cache: Path, port: int) -> int:
    print(f"serving the search page at http://127.0.0.1:{port}/  (Ctrl-C to stop)")
    return main(["serve", "--index", str(out / "index"), "--checkpoint", str(final), "--port", str(port),
                 "--cache-dir", str(cache)])
