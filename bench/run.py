"""Benchmarks of PinCLIP against the tools users would otherwise pick.

    python bench/run.py --out bench                      # everything (`make bench`), about an hour on 2 cores
    python bench/run.py --out bench --quick              # small sizes, checks the code in < 2 min
    python bench/run.py --out bench --only text_embed search_scale

Writes <out>/results.json (machine info + every measurement's figures) and <out>/results.md
(one table per measurement with its target, met or missed; every ratio the median of >= 10
alternating rounds with its min-max, and each item's machine load at its start and end). With --only
(`make bench ITEMS="text_embed serve_load"`), the other measurements are kept from the previous
results.json. Needs the `bench` extra; the peers (sentence-transformers' own stack, fastembed, Infinity,
k6) are installed by the items that use them into venvs of their own under bench/_work/. Run it on a
quiet machine: the items pin processes to cores and time them against each other.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench` importable when run as a script

from bench.common import (  # noqa: E402
    BenchContext,
    BenchResult,
    atomic_write_text,
    busy_processes,
    load_previous,
    machine_info,
    result_from_json,
    result_to_json,
)
from bench.report import ORDER, render  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench"), help="folder for results.json and results.md")
    p.add_argument("--only", nargs="+", choices=ORDER, metavar="NAME", help=f"run only these: {', '.join(ORDER)}")
    p.add_argument("--quick", action="store_true", help="small sizes (checks the code, figures not meaningful)")
    p.add_argument("--demo-run", type=Path, default=Path("runs/demo"), help="the demo run to read (timings, model, data)")
    p.add_argument("--checkpoint", type=Path, default=None, help="trained checkpoint (default: <demo-run>/train/final)")
    return p.parse_args(argv)


def run_one(name: str, ctx: BenchContext) -> BenchResult:
    """One benchmark module's run(ctx); a failure becomes a result with its error, not a crash."""
    start, load, busy = time.perf_counter(), os.getloadavg()[0], busy_processes()
    print(f"\n=== {name} ===", flush=True)
    try:
        result = importlib.import_module(f"bench.{name}").run(ctx)
    except Exception as err:  # noqa: BLE001 - one failing benchmark must not lose the others
        traceback.print_exc()
        result = BenchResult(name, name, error=f"{type(err).__name__}: {err}")
    result.seconds, result.load_before, result.load_after = time.perf_counter() - start, load, os.getloadavg()[0]
    result.busy_before = busy
    for target in result.targets:
        print(f"  {target.name}: {target.value} (target {target.goal})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = BenchContext(out=args.out, quick=args.quick, demo_run=args.demo_run, checkpoint=args.checkpoint)
    machine = machine_info()
    previous = load_previous(args.out / "results.json") if args.only else {}
    results = {n: result_from_json(r) for n, r in previous.get("results", {}).items() if n in ORDER}
    for name in args.only or ORDER:
        results[name] = run_one(name, ctx)
        payload = {"machine": machine, "quick": args.quick,
                   "results": {n: result_to_json(r) for n, r in results.items()}}
        atomic_write_text(args.out / "results.json", json.dumps(payload, indent=1, default=float) + "\n")
        atomic_write_text(args.out / "results.md", render(results, machine, args.quick))
    failed = [n for n in args.only or ORDER if results[n].error]
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'results.md'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
