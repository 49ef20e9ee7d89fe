"""Main job: per-stage wall times of `make demo SERVE=0` against the 20-minute target.

    python bench/run.py --out bench --only demo_stages

Reads <demo run>/timings.json, which `pinclip demo` writes after each stage (data, features,
train, eval, embed, index; "features" is the training stage's cache-filling pass). A stage whose
output already existed is skipped by the demo and listed in the file's "skipped": such a run is
reported as partial, not as a pass.
"""

from __future__ import annotations

import json

from bench.common import BenchContext, BenchResult, Target

TARGET_S = 20 * 60
STAGES = ("data", "train", "eval", "embed", "index")  # "features" is split out of "train" when it ran


def run(ctx: BenchContext) -> BenchResult:
    result = BenchResult("demo_stages", "Main job: `make demo SERVE=0` stage times")
    path = ctx.demo_run / "timings.json"
    if not path.is_file():
        result.notes = [f"{path} is absent: run `make demo SERVE=0` first (the demo writes it); not measured."]
        result.targets = [Target("demo wall time (all stages)", "<= 20 min", "not measured", None)]
        return result
    try:
        record = json.loads(path.read_text())
        if "stages" in record:
            timings = {str(k): float(v) for k, v in record["stages"].items()}
            skipped = [str(s) for s in record.get("skipped", [])]
        else:  # the older flat {stage: seconds}: a stage under 1 s had its output already there
            timings = {str(k): float(v) for k, v in record.items()}
            skipped = [s for s, t in timings.items() if t < 1.0]
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise RuntimeError(f"{path}: unreadable stage timings ({err})") from None
    total = sum(timings.values())
    missing = [s for s in STAGES if s not in timings]
    result.table = [{"stage": s, "wall (s)": f"{t:.1f}", "share": f"{t / total:.0%}" if total else ""}
                    for s, t in timings.items()]
    result.table.append({"stage": "total", "wall (s)": f"{total:.1f}", "share": ""})
    complete = not missing and not skipped
    result.targets = [Target("demo wall time (all stages)" + ("" if complete else ", PARTIAL run"),
                             "<= 20 min", f"{total / 60:.1f} min", total <= TARGET_S if complete else None)]
    result.figures = {"timings_s": timings, "total_s": total, "missing": missing, "skipped": skipped,
                      "source": str(path)}
    result.notes = [f"From {path}."]
    if missing:
        result.notes.append(f"Stages not in this run: {', '.join(missing)} (e.g. --skip-eval, or still running).")
    if skipped:
        result.notes.append(f"Stages skipped, their output already there: {', '.join(skipped)}.")
    return result
