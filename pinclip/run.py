"""`pinclip run --pins P --boards E --out runs/mine`: every stage on your own catalog, in one command.

    pinclip run --pins pins.jsonl --boards boards.jsonl --out runs/mine
    pinclip run --pins pins.csv --boards boards.csv --out runs/mine --config my.yaml train.steps=600
    pinclip run --pins pins.parquet --boards boards.parquet --splits splits.json --out runs/mine

The tables may be parquet, jsonl or csv (the documented format). Stages, each a public `pinclip`
command, each skipped when its output is already there (run the same command again to resume):
    validate  pinclip data validate  -> <out>/data/validation.txt (summary and every problem; a fatal
                                        problem stops the run here, naming file, row and column)
    split     pinclip data split     -> <out>/data/splits.json (cold-start pins, held-out boards:
                                        --heldout-kinds, --heldout-board-frac, --val-board-frac, --cold-frac,
                                        --val-frac; skipped with --splits)
    train     pinclip train          -> <out>/train (resumes from last/; final/ is the step validation
                                        prefers, recorded as chosen_step); "features" is its cache pass
    eval      pinclip eval --run     -> <out>/eval (report.md beside the frozen and bm25 baselines;
                                        --full-eval: 3 seeds, every baseline, the scaling curves)
    embed     pinclip embed          -> <out>/embed (int8 shards of every pin)
    index     pinclip index build    -> <out>/index (then: pinclip serve --index <out>/index ...)
<out>/run.json records the content (sha256) of the tables the run was made from: a run folder
refuses other tables rather than mixing two catalogs. Stage times go to <out>/timings.json, and a
model card (MODEL_CARD.md: data, splits, intended use, the headline table, known weaknesses) is
written beside the model in <out>/train/final/. The training config (--config, --preset, key=value)
is checked before any stage runs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pinclip.cli import UserError
from pinclip.data.schema import MAX_IMAGE_PIXELS

RUN_RECORD = "run.json"
MAX_PRINTED_PROBLEMS = 20


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="every stage on your own catalog: validate, split, train, eval, embed, index",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pins", required=True, help="your pins table (.parquet, .jsonl or .csv)")
    p.add_argument("--boards", required=True, help="your board edges table (.parquet, .jsonl or .csv)")
    p.add_argument("--out", required=True, help="run folder (resumes what is already there)")
    p.add_argument("--splits", default=None, help="your own splits.json instead of `pinclip data split`")
    p.add_argument("--config", default=None, help="training config YAML (preset: tiny|demo|gpu, then keys)")
    p.add_argument("--preset", default=None, help="preset when the config names none (default demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--heldout-kinds", default=None, metavar="KINDS",
                   help="split: comma-separated board_kind values that may be held out (default: every kind but the "
                        "text-defined ones: keyword, concept, query, tag, annotation)")
    p.add_argument("--heldout-board-frac", type=float, default=None,
                   help="split: share of eligible boards held out (default 0.15, raised up to 0.4 for 30 test boards)")
    p.add_argument("--val-board-frac", type=float, default=None,
                   help="split: share of the held-out boards used for validation (default 0.25)")
    p.add_argument("--cold-frac", type=float, default=None, help="split: share of pins held out as cold start (0.1)")
    p.add_argument("--val-frac", type=float, default=None, help="split: share of pins for validation (default 0.05)")
    p.add_argument("--no-image-check", action="store_true", help="validate: only check that image files exist")
    p.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help="decompression-bomb guard")
    p.add_argument("--skip-eval", action="store_true", help="skip the evaluation and its report")
    p.add_argument("--full-eval", action="store_true", help="evaluate 3 seeds against every baseline and the "
                   "scaling curves (trains about 15 more models, two at a time on a CPU)")
    p.add_argument("--serve", type=int, default=0, choices=(0, 1), help="1: serve the search page at the end")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("overrides", nargs="*", help="training config key=value, e.g. train.batch_size=64")
    p.set_defaults(func=run)


def input_record(pins: Path, boards: Path, splits: Path | None) -> dict:
    """What the run is made from: each table's path, size and sha256 (splits: given or made here)."""
    from pinclip.serve.embed import sha256_file

    files = {"pins": pins, "boards": boards, **({"splits": splits} if splits else {})}
    record = {name: {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
              for name, path in files.items()}
    return {**record, "splits_made_here": splits is None}


def check_same_inputs(out: Path, record: dict) -> None:
    """UserError when <out> was made from other tables (content, not path: a moved catalog still resumes)."""
    path = out / RUN_RECORD
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable run record ({err}); delete it or use a new --out folder") from None
    changed = [name for name in ("pins", "boards", "splits")
               if (old.get(name) or {}).get("sha256") != (record.get(name) or {}).get("sha256")]
    if changed or old.get("splits_made_here") != record["splits_made_here"]:
        what = ", ".join(changed) or "splits (given vs made here)"
        raise UserError(f"{out} holds a run made from other input ({what} differ from {path}); use a new --out "
                        "folder, or delete this one to start over")


def write_record(out: Path, record: dict) -> None:
    tmp = out / f".{RUN_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, out / RUN_RECORD)


def validation_passed(target: Path) -> bool:
    """validation.txt is there and ends with "valid" (a fatal problem ends it with "invalid: ...")."""
    try:
        lines = target.read_text().strip().splitlines()
    except OSError:
        return False
    return bool(lines) and lines[-1] == "valid"


def validate_stage(pins: Path, boards: Path, target: Path, max_pixels: int, check_images: bool) -> int:
    """Check both tables; write the summary and every problem to `target`; UserError on a fatal one
    (the file is written then too, ending with "invalid", so the next run validates the fixed tables again)."""
    from pinclip.data.validate import format_summary, problem_lines, validate

    summary, report = validate(str(pins), str(boards), max_pixels, check_images)
    lines = problem_lines(report)
    fatal = sum(p.fatal for p in report.problems)
    print(format_summary(summary))
    for line in lines[:MAX_PRINTED_PROBLEMS]:
        print(f"  {line}")
    if len(lines) > MAX_PRINTED_PROBLEMS:
        print(f"  ... {len(lines) - MAX_PRINTED_PROBLEMS} more in {target}")
    verdict = f"invalid: {fatal} fatal problem(s)" if fatal else "valid"
    text = format_summary(summary) + "\n\n" + (f"{len(lines)} problem(s):\n" + "\n".join(lines) if lines
                                                 else "no problems") + f"\n\n{verdict}\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    if fatal:
        listed = [str(p) for p in report.problems if p.fatal][:MAX_PRINTED_PROBLEMS]
        more = f"\n  ... {fatal - len(listed)} more" if fatal > len(listed) else ""
        raise UserError(f"{fatal} fatal problem(s) in the tables, all of them in {target}:\n  " + "\n  ".join(listed)
                        + f"{more}\nfix the tables and run the same command again")
    return 0


def check_config(args: argparse.Namespace) -> None:
    """UserError for a config that training would refuse (an unknown key, a bad value), before any stage runs."""
    from pinclip.config import load_config

    try:
        load_config(args.config, list(args.overrides), preset=args.preset)
    except ValueError as err:
        raise UserError(str(err)) from None


def split_args(args: argparse.Namespace) -> list[str]:
    """The split settings given to `pinclip run`, as `pinclip data split` flags."""
    flags = {"--heldout-kinds": args.heldout_kinds, "--heldout-board-frac": args.heldout_board_frac,
             "--val-board-frac": args.val_board_frac, "--cold-frac": args.cold_frac, "--val-frac": args.val_frac}
    return [part for flag, value in flags.items() if value is not None for part in (flag, str(value))]


def _eval_done(eval_dir: Path, final: Path) -> bool:
    """metrics.json written after the final model (a retrained model is evaluated again)."""
    metrics, meta = eval_dir / "metrics.json", final / "meta.json"
    return metrics.is_file() and meta.is_file() and metrics.stat().st_mtime_ns >= meta.stat().st_mtime_ns


def _table_args(pins: Path, boards: Path, splits: Path) -> list[str]:
    return ["--pins", str(pins), "--boards", str(boards), "--splits", str(splits)]


def run(args: argparse.Namespace) -> int:
    from pinclip.cli import main
    from pinclip.eval.mix_cli import mix_done, served_checkpoint
    from pinclip.model_card import write_model_card
    from pinclip.pipeline import Timings, embed_and_index, serve
    from pinclip.train.data_source import table_source

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    source = table_source(args.pins, args.boards, args.splits)
    pins, boards = source.pins.resolve(), source.boards.resolve()
    out = Path(args.out).resolve()
    record = input_record(pins, boards, source.splits)
    check_same_inputs(out, record)
    check_config(args)
    if source.splits and split_args(args):
        raise UserError("--splits S is used as it is: the split settings (--heldout-kinds, fractions) make a new one")
    out.mkdir(parents=True, exist_ok=True)
    splits = source.splits.resolve() if source.splits else out / "data" / "splits.json"
    validation = out / "data" / "validation.txt"
    train_dir, cache = out / "train", out / "cache"
    final = train_dir / "final"
    timings = Timings(out)

    timings.stage("validate", lambda: validate_stage(pins, boards, validation, args.max_image_pixels,
                                                     not args.no_image_check), done=validation_passed(validation))
    write_record(out, record)
    timings.stage("split", lambda: main(["data", "split", "--pins", str(pins), "--boards", str(boards),
                                         "--out", str(splits), "--seed", str(args.seed), *split_args(args)]),
                  done=splits.is_file())
    config = [*(["--config", args.config] if args.config else []), *(["--preset", args.preset] if args.preset else [])]
    steps = [f"train.steps={args.steps}"] if args.steps else []
    train_args = ["train", *config, *_table_args(pins, boards, splits), *args.overrides, *steps,
                  f"train.out_dir={train_dir}", f"train.cache_dir={cache}"]
    timings.stage("train", lambda: main(train_args), done=(final / "meta.json").is_file())
    timings.split_features(final)
    timings.record_training(final)
    if not args.skip_eval:  # how much of the untrained towers to mix in, chosen on validation
        timings.stage("mix", lambda: main(["mix", "--run", str(out)]), done=mix_done(out, final))
        extent = ["--baselines", "all", "--seeds", "3", "--scaling"] if args.full_eval \
            else ["--baselines", "bm25,frozen"]
        timings.stage("eval", lambda: main(["eval", "--run", str(out), *_table_args(pins, boards, splits), *extent]),
                      done=not args.full_eval and _eval_done(out / "eval", final))
    write_model_card(out, final)
    served = served_checkpoint(out)
    embed_and_index(timings, out, served, pins, cache)
    timings.print_summary()
    print(f"outputs under {out}/: data/ (validation.txt, splits.json), train/final/ (the model, MODEL_CARD.md), "
          f"eval/report.md, embed/, index/; stage times in timings.json")
    if args.serve:
        return serve(out, served, cache, args.port)
    print(f"serve it: pinclip serve --index {out / 'index'} --checkpoint {served} --cache-dir {cache}")
    return 0
