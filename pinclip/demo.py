"""`pinclip demo --out runs/demo [--serve 0|1]`: the whole system on the embedded demo corpus.

Stages, each a public `pinclip` command, each skipped or resumed when its output is already there:
    data   pinclip data demo            -> <out>/data   (pins, boards, splits, dataset.md, contact sheet)
    train  pinclip train (demo preset)  -> <out>/train  (checkpoints, metrics.jsonl)
    eval   pinclip eval --run           -> <out>/eval   (metrics.json, report.md, plots, TREC files;
           beside the untrained baselines bm25 and frozen; with --full-eval (`make report`) every
           trained baseline, 3 seeds of each trained model and the dataset-scaling curves)
    embed  pinclip embed                -> <out>/embed  (int8 parquet shards + manifest)
    index  pinclip index build          -> <out>/index  (FAISS index over the int8 codes)
    serve  pinclip serve                   http://127.0.0.1:8000 (skipped with --serve 0)
Stage wall times go to <out>/timings.json ({"stages": {name: seconds}, "skipped": [names whose
output was already there]}) and are printed at the end; "features" is the training stage's first
pass that fills the image-feature and text-state caches, split out of "train".
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from pinclip.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run every stage on the embedded demo corpus", description=__doc__)
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--serve", type=int, default=1, choices=(0, 1), help="1: serve the search page at the end")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--preset", default="demo", help="model preset: demo (default) or tiny (a quick smoke run)")
    p.add_argument("--data", default=None, help="use this dataset folder (pins.parquet, boards.parquet, "
                   "splits.json) instead of building the demo corpus")
    p.add_argument("--skip-eval", action="store_true", help="skip the evaluation and its report")
    p.add_argument("--full-eval", action="store_true", help="evaluate against every baseline with 3 seeds and "
                   "the scaling curves, training what is missing (`make report`)")
    p.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra training config overrides (repeatable)")
    p.set_defaults(func=run)


class Timings:
    """Stage wall times, rewritten atomically to <out>/timings.json after every stage."""

    def __init__(self, out: Path) -> None:
        self.path, self.stages, self.skipped = out / "timings.json", {}, []

    def save(self) -> None:
        tmp = self.path.with_name(".timings.json.tmp")
        tmp.write_text(json.dumps({"stages": self.stages, "skipped": self.skipped}, indent=2))
        os.replace(tmp, self.path)

    def stage(self, name: str, fn, done: bool = False) -> None:
        """Run stage `name` (fn returns an exit code) unless `done` (its output is already there)."""
        print(f"\n=== {name} ===" + (" (already done)" if done else ""), flush=True)
        start = time.perf_counter()
        code = 0 if done else fn()
        self.stages[name] = round(time.perf_counter() - start, 1)
        if done:
            self.skipped.append(name)
        self.save()
        if code:
            raise UserError(f"demo stage '{name}' failed (exit code {code})")

    def split_features(self, final: Path) -> None:
        """Report the training stage's feature-cache pass (from the checkpoint's meta) as its own stage."""
        if "train" in self.skipped:
            return
        try:
            features = float(json.loads((final / "meta.json").read_text()).get("features_seconds", 0.0))
        except (OSError, ValueError, TypeError):
            return
        features = min(round(features, 1), self.stages["train"])
        self.stages = {"data": self.stages["data"], "features": features,
                       "train": round(self.stages["train"] - features, 1)}
        self.save()


def run(args: argparse.Namespace) -> int:
    from pinclip.cli import main

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    data = Path(args.data) if args.data else out / "data"
    train_dir, cache = out / "train", out / "cache"
    final = train_dir / "final"
    timings = Timings(out)
    train_args = ["train", "--preset", args.preset, f"train.data_dir={data}", f"train.out_dir={train_dir}",
                  f"train.cache_dir={cache}", *args.train_override]
    if args.steps:
        train_args.append(f"train.steps={args.steps}")

    timings.stage("data", lambda: main(["data", "demo", "--out", str(data)]), done=(data / "splits.json").is_file())
    timings.stage("train", lambda: main(train_args), done=(final / "meta.json").is_file())
    timings.split_features(final)
    if not args.skip_eval:
        extent = ["--baselines", "all", "--seeds", "3", "--scaling", "--domain-shift"] if args.full_eval \
            else ["--baselines", "bm25,frozen"]
        timings.stage("eval", lambda: main(["eval", "--run", str(out), *extent]))
    timings.stage("embed", lambda: main(["embed", "--checkpoint", str(final), "--pins", str(data / "pins.parquet"),
                                         "--out", str(out / "embed"), "--cache-dir", str(cache)]))
    timings.stage("index", lambda: main(["index", "build", "--embeddings", str(out / "embed"),
                                         "--out", str(out / "index")]))
    print("\n=== done ===")
    for name, seconds in timings.stages.items():
        print(f"  {name:<8} {seconds:8.1f} s" + ("  (already done)" if name in timings.skipped else ""))
    print(f"  total    {sum(timings.stages.values()):8.1f} s")
    print(f"outputs under {out}/: data/ (dataset.md, contact_sheet.png), train/ (metrics.jsonl, final/), "
          f"eval/ (report.md, metrics.json), embed/, index/; stage times in {out}/timings.json")
    if args.serve:
        print(f"serving the search page at http://127.0.0.1:{args.port}/  (Ctrl-C to stop)")
        return main(["serve", "--index", str(out / "index"), "--checkpoint", str(final), "--port", str(args.port),
                     "--cache-dir", str(cache)])
    return 0
