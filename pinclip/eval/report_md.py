"""report.md: the tables of an evaluation document (pinclip.eval.report.metrics_document)."""

from __future__ import annotations

from typing import Any

from pinclip.eval.stats import MIN_QUERIES
from pinclip.eval.tasks import PINTEXT, REGIMES, SPLITS, TASKS

TASK_TITLES = {"pintext_i2t": "PinText image→text", "pintext_t2i": "PinText text→image",
               "related": "Related Pins", "search": "Search"}
QUANT_KINDS: tuple[str, ...] = ("fp32", "int8_global", "int8_per_dim", "ann")
PROTOCOL = """How to read it: the corpus of every task is the whole catalog (training, validation and cold-start
pins together). "warm" queries are training pins, "cold" queries are {cold} never seen in training, searched
among all the others. Ground truth comes from held-out {boards} boards only, which are absent from the
training graph and curated (not derived from pin text). Related Pins ignores the query's own duplicate
group (the same concept in another style, an identical title or a near-duplicate image); Search counts
a board's pins of the row's split and ignores its pins of the other split. Regimes say which text the
retrieved pins and query pins keep: full, title only, or none (image: a fresh upload). Every number is
a mean over queries with its 95% bootstrap interval; models trained with several seeds are averaged per
query over seeds (± = std of the seeds' means). "n.s." (not significant): the paired difference is not
significant after the Holm correction over its comparison column (adjusted bootstrap p of 0.05 or more),
or the cell has fewer than {min_queries} queries (too few to call any difference, whatever the interval)."""


def num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def with_ci(cell: dict | None, metric: str) -> str:
    if not cell or cell.get(metric) is None:
        return "n/a"
    lo, hi = cell.get(f"{metric}_ci") or (None, None)
    ci = f" [{num(lo, 2)}, {num(hi, 2)}]" if lo is not None else ""
    std = f" ±{cell[f'{metric}_std']:.3f}" if cell.get("seeds", 1) > 1 and cell.get(f"{metric}_std") is not None else ""
    return f"{num(cell[metric])}{std}{ci}"


def diff_text(d: dict | None) -> str:
    if not d:
        return "n/a"
    mark = "" if d["significant"] else " n.s."
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{mark}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] * 3 + ["---:"] * (len(header) - 3)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align[: len(header)]) + " |",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def cell_of(doc: dict, model: str, task: str, split: str, regime: str) -> dict | None:
    return ((doc["models"].get(model, {}).get(task) or {}).get(split) or {}).get(regime)


def cells(doc: dict) -> list[tuple[str, str, str]]:
    present = {(t, s, r) for by_task in doc["models"].values() for t, by_split in by_task.items()
               for s, by_regime in (by_split or {}).items() for r in by_regime}
    return [(t, s, r) for t in TASKS for s in SPLITS for r in REGIMES if (t, s, r) in present]


def best_baseline(doc: dict, task: str, split: str, regime: str) -> str | None:
    """The other model with the highest primary metric on this cell."""
    primary = doc["primary"]
    scored = [(c[primary], m) for m in doc["models"] if m != "pinclip"
              for c in [cell_of(doc, m, task, split, regime)] if c and c.get(primary) is not None]
    return max(scored)[1] if scored else None


def any_flag(flags: Any) -> bool:
    """True when any leaf of a nested {task: {split: {regime: bool}}} dict is true (an all-false dict is not)."""
    if isinstance(flags, dict):
        return any(any_flag(v) for v in flags.values())
    return bool(flags)


TRAINING_FIT = "warm: training fit (not a headline)"  # warm PinText: the model trained on these very pairs
MULTIPLICITY = ("Significance: the cells of one comparison column are one family; their bootstrap p-values are "
                "Holm-adjusted, and a difference is significant when its adjusted p is below 0.05. Intervals are "
                "95% hierarchical-bootstrap intervals (held-out boards, or queries for PinText, then seeds) and are "
                "not adjusted.")


def split_label(task: str, split: str) -> str:
    """The split as the tables name it: warm PinText is a training-fit check."""
    return TRAINING_FIT if task in PINTEXT and split == "warm" else split


def chosen_other(doc: dict, task: str, split: str, regime: str) -> str | None:
    """The headline's "best other" of a cell: chosen on validation when the document says so (best_other)."""
    chosen = ((doc.get("best_other", {}).get(task) or {}).get(split) or {}).get(regime)
    return chosen["model"] if chosen else best_baseline(doc, task, split, regime)


def best_other_note(doc: dict) -> str:
    """How the headline's best other models were chosen."""
    where = {c["chosen_on"] for by_split in (doc.get("best_other") or {}).values() for by_regime in by_split.values()
             for c in by_regime.values()}
    if doc.get("partition") == "val":
        return "best other: the best other model of each row on these validation numbers."
    if where == {"validation"}:
        return "best other: chosen on validation (the best other model of each row in the validation evaluation)."
    if "validation" in where:
        return ("best other: chosen on validation where the validation evaluation has the row, else on these test "
                "numbers.")
    return ("best other: no validation evaluation was given, so it is chosen on these test numbers (the best of "
            "several noisy models, which favours the other side).")


def selection_note(doc: dict) -> list[str]:
    """The selection score of each model (pinclip.eval.selection)."""
    lines = []
    for model, s in (doc.get("selection") or {}).items():
        if s and s.get("score") is not None:
            missing = f", cannot score {len(s['missing'])}" if s.get("missing") else ""
            lines.append(f"- {model}: {s['score']:.3f} ({len(s['cells'])} cells{missing})")
    if not lines:
        return []
    return ["Selection score: mean nDCG@10 over the cold cells and the warm Related Pins and Search cells (never "
            "warm PinText); choose settings on it on the validation partition.", "", *lines, ""]


def headline_section(doc: dict) -> list[str]:
    primary, models = doc["primary"], list(doc["models"])
    ours = "pinclip" in models
    header = ["task", "split", "regime", "queries", "corpus", *models,
              *(["best other", "pinclip − best other"] if ours and len(models) > 1 else [])]
    rows = []
    for task, split, regime in cells(doc):
        any_cell = next((c for m in models for c in [cell_of(doc, m, task, split, regime)] if c), {})
        row = [TASK_TITLES[task], split_label(task, split), regime, str(any_cell.get("queries", "")),
               str(any_cell.get("corpus", "")),
               *(with_ci(cell_of(doc, m, task, split, regime), primary) for m in models)]
        if ours and len(models) > 1:
            best = chosen_other(doc, task, split, regime)
            d = ((doc["comparisons"].get(best, {}).get(task) or {}).get(split, {}).get(regime) or {}).get(primary)
            lexical = (doc.get("lexical", {}).get(task) or {}).get(split, {}).get(regime)
            row += [f"{best or 'n/a'}{' (lexical)' if lexical else ''}", diff_text(d)]
        rows.append(row)
    lines = [f"## Headline: {primary} [95% CI]", ""] + table(header, rows)
    if any_flag(doc.get("lexical")):
        lines.append("(lexical): BM25 matches or beats every learned model here — the task is lexically solvable.")
        lines.append("")
    if ours and len(models) > 1:
        lines += [best_other_note(doc), "", MULTIPLICITY, ""]
    return lines + selection_note(doc)


def comparison_section(doc: dict) -> list[str]:
    others = list(doc.get("comparisons", {}))
    if not others:
        return []
    rows = []
    for task, split, regime in cells(doc):
        rows.append([TASK_TITLES[task], split_label(task, split), regime, *(
            diff_text(((doc["comparisons"][m].get(task) or {}).get(split, {}).get(regime) or {}).get(doc["primary"]))
            for m in others)])
    return [f"## PinCLIP minus each model, paired over the same queries ({doc['primary']})", ""] + \
        table(["task", "split", "regime", *(f"vs {m}" for m in others)], rows)


def detail_section(doc: dict) -> list[str]:
    lines = ["## Every metric", "", "R@K is true recall; its ceiling (a query with more than K relevant pins "
             "cannot reach 1) is in parentheses. seen@10 is the share of the top 10 that are training pins (on "
             "cold rows every relevant pin is unseen, so a high share is a model favouring what it trained on).", ""]
    for task in TASKS:
        rows = []
        for model in doc["models"]:
            for split in SPLITS:
                for regime in REGIMES:
                    c = cell_of(doc, model, task, split, regime)
                    if c is None and regime not in ((doc["models"][model].get(task) or {}).get(split) or {}):
                        continue
                    c = c or {}
                    rows.append([model, split, regime, with_ci(c, "ndcg@10"),
                                 f"{with_ci(c, 'recall@10')} ({num(c.get('ceiling@10'), 2)})",
                                 f"{with_ci(c, 'recall@100')} ({num(c.get('ceiling@100'), 2)})",
                                 with_ci(c, "mrr"), num(c.get("hit@10")), num(c.get("seen@10")),
                                 str(c.get("queries", "n/a")), str(c.get("corpus", "n/a"))])
        if rows:
            lines += [f"### {TASK_TITLES[task]}", ""] + table(
                ["model", "split", "regime", "nDCG@10", "R@10", "R@100", "MRR@100", "hit@10", "seen@10", "queries",
                 "corpus"],
                rows)
    return lines


def quantization_section(doc: dict) -> list[str]:
    rows = []
    for model, by_task in doc["quantization"].items():
        for task in TASKS:
            for split, q in (by_task.get(task) or {}).items():
                fp32 = q.get("fp32") or {}
                kept = [f"{100 * (q.get(k) or {}).get(m, 0) / fp32[m]:.1f}%" if fp32.get(m) and q.get(k) else "n/a"
                        for k in QUANT_KINDS[1:] for m in ("recall@10", "ndcg@10")]
                rows.append([model, TASK_TITLES[task], split, num(fp32.get("recall@10")), num(fp32.get("ndcg@10")),
                             *kept, str(q.get("ann_index", ""))])
    if not rows:
        return []
    header = ["model", "task", "split", "fp32 R@10", "fp32 nDCG@10", "int8 global R@10", "int8 global nDCG",
              "per-dim R@10", "per-dim nDCG", "ANN R@10", "ANN nDCG", "index"]
    return ["## Quantization (regime full, seed 0): share of fp32 kept", "",
            "int8 global: one scale and zero-point (from the checkpoint) on queries and corpus; per-dim: "
            "per-dimension ranges fitted on the evaluated vectors; ANN: the server's FAISS index over int8 codes "
            "with fp32 queries.", "", "![int8 vs fp32](quantization.png)", ""] + table(header, rows)


def dims_section(doc: dict) -> list[str]:
    lines = ["## Matryoshka dims (regime full, seed 0): nDCG@10", ""]
    for model, by_dim in doc["dims"].items():
        dims = sorted(by_dim, key=int, reverse=True)
        rows = [[TASK_TITLES[t], s, "full", *(num(((by_dim[d].get(t) or {}).get(s) or {}).get("ndcg@10")) for d in dims)]
                for t in TASKS for s in SPLITS if any((by_dim[d].get(t) or {}).get(s) for d in dims)]
        if rows:
            lines += [f"### {model}", ""] + table(["task", "split", "regime", *dims], rows)
    return lines if len(lines) > 2 else []


def scaling_section(doc: dict) -> list[str]:
    points = (doc.get("scaling") or {}).get("points") or []
    if not points:
        return []
    rows = [[f"{100 * p['fraction']:.0f}%", p.get("budget", ""), str(p.get("train_pins", "n/a")),
             str(p.get("steps", "n/a")), num(p.get("pintext_recall@10")),
             *(num((p.get(t) or {}).get(s)) for t in ("pintext_i2t", "pintext_t2i") for s in SPLITS)] for p in points]
    header = ["training pins", "budget", "count", "steps", "PinText R@10", "i2t warm", "i2t cold", "t2i warm",
              "t2i cold"]
    return ["## Dataset scaling", "", doc["scaling"].get("metric", "") + ". Equal steps hold compute fixed; "
            "equal epochs give a share f of the pins f of the steps.", "", "![scaling](scaling.png)", ""] + \
        table(header, rows)


def cost_text(cost: dict | None) -> str:
    """", trained 412 s, 1.3 PFLOP" (mean per seed), or "" for an untrained model."""
    if not cost or cost.get("seconds") is None:
        return ""
    flops = f", {cost['flops'] / 1e15:.2f} PFLOP" if cost.get("flops") else ""
    return f"; training {cost['seconds']:.0f} s (wall, mean per seed){flops}"


def render_markdown(doc: dict) -> str:
    meta, data = doc["meta"], doc["meta"].get("dataset") or {}
    cold = "cold-start pins" if doc["partition"] == "test" else "validation pins"
    boards = "test" if doc["partition"] == "test" else "validation"
    lines = [f"# PinCLIP evaluation — {doc['partition']} partition", "",
             f"- dataset: {data.get('pins', '?')} pins, {data.get('boards', '?')} boards, {data.get('edges', '?')} "
             f"edges; {data.get('cold_start_pins', '?')} cold-start and {data.get('val_pins', '?')} validation pins "
             f"(whole duplicate groups, never trained); {data.get('heldout_boards', '?')} held-out boards, "
             f"{data.get('val_boards', '?')} of them for validation ({data.get('pins_path', '')})",
             f"- machine: {meta['machine'].get('cpu_cores')} CPU cores, GPU: {meta['machine'].get('gpu') or 'none'}; "
             f"{meta['date']}",
             *(f"- {m}: {info.get('version')}, {info.get('seeds')} seed(s){cost_text(info.get('training'))}"
               for m, info in meta["models"].items()),
             "", PROTOCOL.format(cold=cold, boards=boards, min_queries=MIN_QUERIES), ""]
    for section in (headline_section, comparison_section, detail_section, quantization_section, dims_section,
                    scaling_section):
        lines += section(doc)
    notes = [f"- {m}, {t}: {n}" for m, by_task in meta.get("notes", {}).items() for t, n in by_task.items()]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines).rstrip() + "\n"
