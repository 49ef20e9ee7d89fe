"""Summary of a mutation-testing run: mutants, killed and survivors by module, from mutmut's results.

    make mutants                         # runs mutmut, then this script
    .venv/bin/python scripts/mutants_report.py [--out mutants/report.md] [--pending mutants/pending.toml]

Reads the per-file results mutmut keeps under mutants/ (the `<file>.meta` beside each mutated file)
and prints a table by module: mutants, killed (a test failed), timeouts (the mutant hung) and crashes
(the test process died, e.g. a segfault in FAISS), all three counted as killed; survivors (every test
passed), no tests (no selected test calls the function), equivalent (a survivor that
tests/equivalent_mutants.toml explains: it computes what the original computes), and the share
killed, of all mutants and of those that are not equivalent.

A survivor that the file does not explain is listed with its diff in the report; --pending writes
it as a TOML entry to fill in. An explanation is pinned to the mutated line: when the code changes
and mutmut's numbering moves, the entry shows up as stale instead of hiding another mutant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import tomllib

EQUIVALENT = Path("tests/equivalent_mutants.toml")
# mutmut's exit codes (mutmut.stats.status_by_exit_code)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", -9: "timeout",
          -6: "crash", -11: "crash"}  # SIGABRT, SIGSEGV
COLUMNS = ("killed", "timeout", "crash", "survived", "no tests", "equivalent", "not checked")
DETECTED = ("killed", "timeout", "crash")  # a test failed, hung or its process died


def read_results(root: Path) -> dict[str, dict[str, str]]:
    """module path -> {mutant name: status}."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            module = str(meta.relative_to(root))[: -len(".meta")]
            out[module] = {name: "not checked" if code is None else STATUS.get(code, "other")
                           for name, code in codes.items()}
    return out


def mutated_line(name: str, module: str) -> tuple[str, str]:
    """(the mutant's diff, its added lines joined by ' / ')."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(name, path=module)
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return diff, " / ".join(added)


def read_equivalent(path: Path) -> dict[str, tuple[str, str]]:
    """mutant name -> (its mutated line, why it is equivalent)."""
    if not path.is_file():
        return {}
    out = {}
    for group in tomllib.loads(path.read_text())["equivalent"]:
        for name, line in group["mutants"].items():
            out[name] = (line, group["why"])
    return out


def row(name: str, c: Counter) -> str:
    n = sum(c.values())
    killed = sum(c[k] for k in DETECTED)
    return (f"| {name} | {n} | " + " | ".join(str(c[k]) for k in COLUMNS)
            + f" | {percent(killed, n)} | {percent(killed, n - c['equivalent'])} |")


def percent(part: int, whole: int) -> str:
    """Rounded down to 0.1 (4,072 of 4,074 is 99.9, not 100.0)."""
    return f"{math.floor(1000.0 * part / max(whole, 1)) / 10:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="mutants", help="mutmut's working folder")
    parser.add_argument("--out", default="mutants/report.md", help="the report (markdown)")
    parser.add_argument("--pending", default="mutants/pending.toml", help="unexplained survivors as TOML entries")
    args = parser.parse_args()
    root = Path(args.root)
    results = read_results(root) if root.is_dir() else {}
    if not results:
        print(f"no mutmut results under {root}/: run `make mutants` first", file=sys.stderr)
        return 2
    explained = read_equivalent(EQUIVALENT)
    lines = ["| module | mutants | " + " | ".join(COLUMNS) + " | killed % | killed % of non-equivalent |",
             "|---|" + "---:|" * (len(COLUMNS) + 3)]
    total: Counter = Counter()
    details, pending, stale = [], [], []
    for module, by_name in results.items():
        counts: Counter = Counter()
        for name, status in by_name.items():
            if status in ("survived", "no tests"):
                diff, line = mutated_line(name, module)
                if name in explained and explained[name][0] == line:
                    status = "equivalent"
                else:
                    if name in explained:
                        stale.append(f"- `{name}`: recorded `{explained[name][0]}`, now `{line}`")
                    details += [f"- `{name}` ({status})", "", "```diff", diff, "```", ""]
                    pending.append(f'"{name}" = {json.dumps(line)}')
            counts[status] += 1
        total.update(counts)
        lines.append(row(module, counts))
    lines.append(row("**all**", total))
    report = ["# Mutation testing", "", *lines, ""]
    if stale:
        report += ["## Stale explanations (the mutant's line changed)", "", *stale, ""]
    if details:
        report += ["## Survivors without an explanation", "", *details]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(report) + "\n")
    if pending:
        Path(args.pending).write_text('[[equivalent]]\nwhy = "TODO"\n[equivalent.mutants]\n' + "\n".join(pending) + "\n")
    print("\n".join(lines))
    print(f"\n{len(pending)} survivors without an explanation ({len(stale)} stale); report: {args.out}"
          + (f", entries to fill in: {args.pending}" if pending else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
