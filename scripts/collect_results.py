"""Copy a finished `make report` run's results into the repository, where the README quotes them from.

    python scripts/collect_results.py --run runs/demo --out results/demo     # `make report` runs this last

Copies, when present: eval/report.md and metrics.json (the test partition), eval-val/report.md (every model
on validation, where "best other" is chosen), eval-domain/report.md (the domain-shift split), the validation
reports the towers' weight was chosen on and mix.json (that weight and every weight's selection score), timings.json (stage wall times) and the headline and
scaling plots into docs/. Each file is written atomically; a missing one is reported, not an error.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

FILES = {  # run-relative source -> name under --out
    "eval/report.md": "report.md",
    "eval/metrics.json": "metrics.json",
    "eval-val/report.md": "report-val.md",
    "eval-domain/report.md": "report-domain.md",
    "eval-mix-val/report.md": "report-mix-val.md",
    "eval-mix-domain-val/report.md": "report-mix-domain-val.md",
    "mix.json": "mix.json",
    "timings.json": "timings.json",
}
PLOTS = {"eval/headline.png": "headline.png", "eval/scaling.png": "scaling.png"}  # -> docs/


def copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def collect(run: Path, out: Path, docs: Path) -> list[str]:
    """Copy what the run has; the names it lacks."""
    if not (run / "eval" / "report.md").is_file():
        raise SystemExit(f"{run / 'eval' / 'report.md'} not found: run `make report` (or `pinclip eval --run {run}`) first")
    missing = []
    for source, name in FILES.items():
        if (run / source).is_file():
            copy_atomic(run / source, out / name)
        else:
            missing.append(source)
    for source, name in PLOTS.items():
        if (run / source).is_file():
            copy_atomic(run / source, docs / name)
        else:
            missing.append(source)
    return missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/demo"))
    p.add_argument("--out", type=Path, default=Path("results/demo"))
    p.add_argument("--docs", type=Path, default=Path("docs"), help="where the README's plots live")
    args = p.parse_args(argv)
    missing = collect(args.run, args.out, args.docs)
    print(f"copied {args.run}'s results to {args.out}/" + (f"; not in the run: {', '.join(missing)}" if missing else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
