"""`pinclip demo --out runs/demo [--serve 0|1]`: the whole system on the embedded demo corpus.

Stages, each a public `pinclip` command, each skipped or resumed when its output is already there:
    data   pinclip data demo            -> <out>/data   (pins, boards, splits, dataset.md, contact sheet)
    train  pinclip train (demo preset)  -> <out>/train  (checkpoints, metrics.jsonl)
    mix    pinclip mix --run            -> <out>/mix.json, <out>/mixed (the untrained towers' weight, chosen
                                           on validation; the served model when a weight above 0 wins)
    mix-domain  (--full-eval only)      -> the same choice made again counting the domain-shift split's
                                           validation cells (pinclip mix --domain-shift)
    eval-val  (--full-eval only)        -> <out>/eval-val (every model on validation: the test report's "best
                                           other" is chosen there)
    eval   pinclip eval --run           -> <out>/eval   (metrics.json, report.md, plots, TREC files;
           beside the untrained baselines bm25 and frozen; with --full-eval (`make report`) every
           trained baseline, 3 seeds of each trained model and the domain-shift experiment; with --scaling
           also the dataset-scaling curves)
    embed  pinclip embed                -> <out>/embed  (int8 parquet shards + manifest; skipped when complete)
    index  pinclip index build          -> <out>/index  (FAISS index over the int8 codes; skipped when built)
    serve  pinclip serve                   http://127.0.0.1:8000 (skipped with --serve 0)
Stage wall times go to <out>/timings.json ({"stages": {name: seconds}, "skipped": [names whose
output was already there]}) and are printed at the end, and MODEL_CARD.md is written beside the model in
<out>/train/final/; "features" is the training stage's first
pass that fills the image-feature and text-state caches, split out of "train". The stage machinery
is shared with `pinclip run` (pinclip/pipeline.py), which runs the same stages on your own catalog.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


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
    p.add_argument("--full-eval", action="store_true", help="evaluate against every baseline with 3 seeds, in "
                   "domain and on the domain-shift split, training what is missing (`make report`)")
    p.add_argument("--scaling", action="store_true", help="with --full-eval: add the dataset-scaling curves (six "
                   "more trainings; `make report SCALING=1`)")
    p.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra training config overrides (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pinclip.baselines import BASELINES
    from pinclip.cli import main
    from pinclip.eval.mix_cli import mix_done, served_checkpoint
    from pinclip.model_card import write_model_card
    from pinclip.pipeline import Timings, embed_and_index, eval_done, model_version, serve

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
    _retire_other_recipe(args.preset, train_args[3:])  # the preset changed since (e.g. newly tuned): train anew
    timings.stage("train", lambda: main(train_args), done=(final / "meta.json").is_file())
    timings.split_features(final)
    if not args.skip_eval:  # how much of the untrained towers to mix in, chosen on validation
        timings.stage("mix", lambda: main(["mix", "--run", str(out)]), done=mix_done(out, final))
        extent = ["--baselines", "all", "--seeds", "3"] if args.full_eval else ["--baselines", "bm25,frozen"]
        if args.full_eval and args.scaling:
            extent.append("--scaling")
        if args.full_eval and (data / "splits_domain.json").is_file():
            extent.append("--domain-shift")
            # choose the towers' weight again, counting the domain-shift validation cells: a weight that wins in
            # domain by forgetting is not served
            timings.stage("mix-domain", lambda: main(["mix", "--run", str(out), "--domain-shift"]),
                          done=mix_done(out, final, domain=True))
        elif args.full_eval:
            print(f"no {data / 'splits_domain.json'}: the domain-shift experiment is skipped "
                  "(make one with `pinclip data split --domain-column COLUMN`)")
        # an evaluation that already judged the served model beside these models is not run again (resumed runs)
        version = model_version(served_checkpoint(out))
        names = ["pinclip", *BASELINES] if args.full_eval else ["pinclip", "frozen", "bm25"]
        seeds = 3 if args.full_eval else 1
        if args.full_eval:  # every model on validation first: the test report's "best other" is chosen there
            timings.stage("eval-val", lambda: main(["eval", "--run", str(out), "--baselines", "all", "--seeds", "3",
                                                    "--partition", "val", "--no-quant", "--no-trec"]),
                          done=eval_done(out / "eval-val", version, names, seeds, "val"))
        done = eval_done(out / "eval", version, names, seeds, "test", scaling="--scaling" in extent)
        if "--domain-shift" in extent:  # its report too, of that experiment's model mixed at the chosen weight
            done = done and eval_done(out / "eval-domain", model_version(_domain_served(out)), names, 1, "test")
        timings.stage("eval", lambda: main(["eval", "--run", str(out), *extent]), done=done)
    timings.record_training(final)
    write_model_card(out, final)
    served = served_checkpoint(out)
    embed_and_index(timings, out, served, data / "pins.parquet", cache)
    timings.print_summary()
    print(f"outputs under {out}/: data/ (dataset.md, contact_sheet.png), train/ (metrics.jsonl, final/), "
          f"eval/ (report.md, metrics.json), embed/, index/; stage times in {out}/timings.json")
    return serve(out, served, cache, args.port) if args.serve else 0



def _domain_served(out: Path) -> Path:
    """The domain-shift experiment's PinCLIP as its report judges it: mixed at the run's chosen weight (where
    pinclip.eval.cli.evaluate_domain_shift writes the mix), or alone."""
    from pinclip.eval.mix_cli import chosen_weight
    from pinclip.experiments import model_dir

    weight = chosen_weight(out)
    if weight > 0:
        return out / "domain" / "mixes" / f"pinclip-seed0-w{weight:g}"
    return Path(model_dir(out / "domain", "pinclip", 0)) / "final"


def _retire_other_recipe(preset: str, overrides: list[str]) -> None:
    """Move aside <run>/train when it was trained with another recipe than the preset and overrides now give
    (pinclip.experiments.retire_other_recipe), so that the train stage trains anew instead of keeping it."""
    from pinclip.cli import UserError
    from pinclip.config import load_config
    from pinclip.experiments import retire_other_recipe

    try:
        cfg = load_config(None, overrides, preset=preset)
    except ValueError as err:
        raise UserError(str(err)) from None
    retire_other_recipe(cfg)
