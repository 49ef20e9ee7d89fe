"""results.md from the benchmark results: one section per measurement, its targets met or missed."""

from __future__ import annotations

from typing import Any

from bench.common import BenchResult

ORDER = ("demo_stages", "train_mfu", "text_embed", "image_embed", "search_scale", "quant_quality", "graph_walk",
         "serve_load", "serve_durability", "milvus_recall")


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """A GitHub table from dict rows (columns: the union of keys, in first-seen order)."""
    if not rows:
        return []
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |")
    return lines


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def section(result: BenchResult) -> list[str]:
    lines = [f"## {result.title}", ""]
    if result.error:
        return [*lines, f"Failed: {result.error}", ""]
    if result.targets:
        lines += markdown_table([{"measure": t.name, "target": t.goal, "measured": t.value, "": verdict(t.met)}
                                 for t in result.targets])
        lines.append("")
    if result.table:
        lines += [*markdown_table(result.table), ""]
    lines += [f"- {note}" for note in result.notes]
    busy = f"; other busy processes at its start: {', '.join(result.busy_before)}" if result.busy_before else ""
    lines += [f"- ran {result.seconds:.0f} s, 1-min load average {result.load_before:.1f} at its start, "
              f"{result.load_after:.1f} at its end{busy}", ""]
    if result.markdown:
        lines += [*result.markdown, ""]
    return lines


def render(results: dict[str, BenchResult], machine: dict[str, Any], quick: bool) -> str:
    """The whole results.md."""
    lines = [
        "# PinCLIP benchmarks",
        "",
        f"Date {machine['date']}; {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads (AVX512-BF16: {'yes' if machine['avx512_bf16'] else 'no'}). "
        "Written by `python bench/run.py --out bench`" + (" --quick (SMALL SIZES: code check only)" if quick else "")
        + ". Figures are medians over repeated runs; comparisons are ratios measured in the same run.",
        "",
    ]
    if machine.get("busy_processes"):
        lines += [f"Other processes were running during the run (1-min load average {machine['load_average_1m']} "
                  "at the start on a machine with "
                  f"{machine['cores']} cores), so absolute times are pessimistic; ratios are paired per round:", ""]
        lines += [f"- `{p}`" for p in machine["busy_processes"][:6]] + [""]
    summary = [{"measurement": results[n].title, "measure": t.name, "target": t.goal, "measured": t.value,
                "": verdict(t.met)} for n in ORDER if n in results for t in results[n].targets]
    lines += ["## Summary", "", *markdown_table(summary), ""]
    for name in ORDER:
        if name in results:
            lines += section(results[name])
    return "\n".join(lines).rstrip() + "\n"
