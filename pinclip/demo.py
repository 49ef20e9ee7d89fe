"""`pinclip demo --out runs/demo [--serve 0|1]`: the whole system on the embedded demo corpus.

Stages, each a public `pinclip` command, each skipped or resumed when its output is already there:
    data   pinclip data demo            -> <out>/data   (pins, boards, splits, dataset.md, contact sheet)
    train  pinclip train (demo preset)  -> <out>/train  (checkpoints, metrics.jsonl)
    eval   pinclip eval --run           -> <out>/eval   (metrics.json, report.md, plots; <out>/baselines)
           beside the frozen-towers baseline; with --full-eval also the two trained baselines and the
           dataset-scaling curve (five more training runs: about 45 min more on 2 CPU cores)
    embed  pinclip embed                -> <out>/embed  (int8 parquet shards + manifest)
    index  pinclip index build          -> <out>/index  (FAISS index over the int8 codes)
    serve  pinclip serve                   http://127.0.0.1:8000 (skipped with --serve 0)
Stage wall times go to <out>/timings.json and are printed at the end.
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
    p.add_argument("--full-eval", action="store_true", help="evaluate against every baseline and the "
                   "scaling curve, training what is missing (`make report`; about 45 min more on 2 CPU cores)")
    p.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra training config overrides (repeatable)")
    p.set_defaults(func=run)


def _stage(name: str, timings: dict, out: Path, fn) -> None:
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    code = fn()
    timings[name] = round(time.perf_counter() - start, 1)
    tmp = out / ".timings.json.tmp"
    tmp.write_text(json.dumps(timings, indent=2))
    os.replace(tmp, out / "timings.json")
    if code:
        raise UserError(f"demo stage '{name}' failed (exit code {code})")


def run(args: argparse.Namespace) -> int:
    from pinclip.cli import main

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    data = Path(args.data) if args.data else out / "data"
    train_dir, cache = out / "train", out / "cache"
    final = train_dir / "final"
    timings: dict[str, float] = {}
    train_args = ["train", "--preset", args.preset, f"train.data_dir={data}", f"train.out_dir={train_dir}",
                  f"train.cache_dir={cache}", *args.train_override]
    if args.steps:
        train_args.append(f"train.steps={args.steps}")

    _stage("data", timings, out, lambda: 0 if (data / "splits.json").is_file()
           else main(["data", "demo", "--out", str(data)]))
    _stage("train", timings, out, lambda: 0 if (final / "meta.json").is_file() else main(train_args))
    if not args.skip_eval:
        extent = ["--baselines", "all", "--scaling"] if args.full_eval else ["--baselines", "frozen"]
        _stage("eval", timings, out, lambda: main(["eval", "--run", str(out), *extent]))
    _stage("embed", timings, out, lambda: main(["embed", "--checkpoint", str(final), "--pins",
                                                  str(data / "pins.parquet"), "--out", str(out / "embed"),
                                                  "--cache-dir", str(cache)]))
    _stage("index", timings, out, lambda: main(["index", "build", "--embeddings", str(out / "embed"),
                                                  "--out", str(out / "index")]))
    print("\n=== done ===")
    for name, seconds in timings.items():
        print(f"  {name:<6} {seconds:8.1f} s")
    print(f"  total  {sum(timings.values()):8.1f} s")
    print(f"outputs under {out}/: data/ (dataset.md, contact_sheet.png), train/ (metrics.jsonl, final/), "
          f"eval/ (report.md, metrics.json), embed/, index/; stage times in {out}/timings.json")
    if args.serve:
        print(f"serving the search page at http://127.0.0.1:{args.port}/  (Ctrl-C to stop)")
        return main(["serve", "--index", str(out / "index"), "--checkpoint", str(final), "--port", str(args.port),
                     "--cache-dir", str(cache)])
    return 0
