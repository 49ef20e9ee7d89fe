"""MODEL_CARD.md beside a run's model: data, splits, intended use, the headline table, known weaknesses.

    write_model_card(Path("runs/mine"), Path("runs/mine/train/final"))   # pinclip run / pinclip demo do this

Everything in the card is read from what the run wrote: the checkpoint's meta.json and config.yaml,
<run>/data/validation.txt (or the demo's dataset.md), the splits.json the run trained on, run.json
(the tables' sha256) and <run>/eval/metrics.json (the headline table with 95% intervals, the same
rows as report.md). The weaknesses listed are the cells where PinCLIP is significantly below another
model, the Search cells with too few queries to conclude, and what is known of the recipe itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from pinclip.eval.report_md import TASK_TITLES, headline_section
from pinclip.eval.stats import MIN_QUERIES

INTENDED_USE = """- **For**: one embedding per pin (image and texts) for retrieval and ranking features: related items
  (pin → pin), text search (query → pin), image search, and brand-new items with no engagement (cold start:
  computed from content alone). Served as int8 vectors with one global scale and zero-point.
- **Trained for this catalog only**: the board graph it learned from is this catalog's; on another domain
  start from the numbers of a run on that domain, not from these.
- **Not for**: decisions about people, or content moderation; the model has seen no such labels. Its
  biases are those of the pretrained towers and of the catalog's boards."""

RECIPE_WEAKNESSES = [
    "Title-only pins: the fused pass reads a pin with only a title worse than the mean of the two tower "
    "embeddings (see the `title` rows); keep descriptions and keywords in the pins where you have them.",
    "Domain shift: fine-tuning on one catalog narrows what the pretrained towers knew; on categories it never "
    "trained on it can fall below the untrained towers (the `frozen` baseline).",
    "Search with full text can be lexically solvable: where `bm25` is level, the learned model adds little.",
]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def model_section(final: Path) -> list[str]:
    meta = _read_json(final / "meta.json")
    try:
        cfg = yaml.safe_load((final / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    model, train = cfg.get("model") or {}, cfg.get("train") or {}
    vlm = (model.get("vlm") or {}).get("path")
    towers = f"VLM {vlm}" if vlm else (f"{(model.get('vision') or {}).get('name')} + "
                                       f"{(model.get('backbone') or {}).get('name')}")
    chosen = meta.get("chosen_step", meta.get("step"))
    lines = ["## Model", "", f"- version: `{meta.get('version', '?')}`; towers: {towers}; "
             f"Matryoshka dims {meta.get('dims')}; int8 with one global scale and zero-point",
             f"- training: {meta.get('stopped_step', meta.get('step'))} of {train.get('steps', '?')} steps on "
             f"{meta.get('train_pins', '?')} training pins; this checkpoint is step {chosen}"]
    if "best_val_recall@10" in meta:
        lines[-1] += f", the one validation preferred (PinText Recall@10 {meta['best_val_recall@10']:.3f})"
    mix = _read_json(final.parent.parent / "mix.json")
    served = final
    if mix.get("version") == meta.get("version") and float(mix.get("weight") or 0) > 0:
        served = final.parent.parent / "mixed"
        lines.append(f"- served: mixed with its untrained towers at weight {mix['weight']:g} (chosen on validation "
                     f"among {', '.join(mix.get('scores') or {})}; `pinclip mix`), one "
                     "[PinCLIP ; towers] vector without Matryoshka prefixes")
    return lines + [f"- load it: `Embedder.from_checkpoint(\"{served}\")` or `pinclip serve --checkpoint {served}`", ""]


def data_section(run: Path, splits_path: Path | None) -> list[str]:
    lines = ["## Data", ""]
    validation = run / "data" / "validation.txt"
    summary = validation.read_text().split("\n\n")[0] if validation.is_file() else ""
    lines += [f"    {line}" for line in summary.splitlines()] or ["(no validation summary in this run folder)"]
    record = _read_json(run / "run.json")
    for name in ("pins", "boards"):
        if name in record:
            lines.append(f"- {name}: `{record[name]['path']}` (sha256 {record[name]['sha256'][:16]}…)")
    splits = _read_json(splits_path) if splits_path else {}
    lines += ["", "## Splits", ""]
    if not splits:
        return lines + ["No split: every pin trained, nothing was held out, and there is no evaluation.", ""]
    val_boards = set(splits.get("val_boards") or [])
    test = [b for b in splits.get("heldout_boards", []) if b not in val_boards]
    kinds = (splits.get("config") or {}).get("heldout_kinds")
    return lines + [
        f"- {len(splits.get('cold_start_pins', []))} cold-start pins and {len(splits.get('val_pins', []))} validation "
        "pins, held out as whole duplicate groups and never trained on",
        f"- {len(splits.get('heldout_boards', []))} boards held out of the training graph "
        f"({'kinds ' + ', '.join(kinds) if kinds else 'every kind but the text-defined ones'}): "
        f"{len(test)} test boards (the Search queries and Related Pins ground truth) and {len(val_boards)} for "
        f"validation (`{splits_path}`)", ""]


def weaknesses(doc: dict) -> list[str]:
    """The cells where PinCLIP is significantly below another model, and the Search cells too small to judge."""
    found = []
    primary = doc.get("primary", "ndcg@10")
    for model, by_task in (doc.get("comparisons") or {}).items():
        for task, by_split in (by_task or {}).items():
            for split, by_regime in (by_split or {}).items():
                for regime, d in (by_regime or {}).items():
                    d = (d or {}).get(primary)
                    if d and d.get("significant") and d["diff"] < 0:
                        found.append(f"{TASK_TITLES.get(task, task)}, {split}, {regime}: {d['diff']:+.3f} "
                                     f"[{d['low']:+.3f}, {d['high']:+.3f}] {primary} below `{model}`")
    pin_cells = ((doc.get("models") or {}).get("pinclip") or {}).get("search") or {}
    small = sorted({split for split, by_regime in pin_cells.items() for cell in (by_regime or {}).values()
                    if cell and cell.get("queries", MIN_QUERIES) < MIN_QUERIES})
    if small:
        found.append(f"Search ({', '.join(small)}): fewer than {MIN_QUERIES} queries, no difference is called "
                     "significant; hold out more boards (`--heldout-board-frac`) or add boards")
    return found


def evaluation_section(run: Path) -> tuple[list[str], list[str]]:
    doc = _read_json(run / "eval" / "metrics.json")
    if not doc.get("models"):
        return ["## Evaluation", "", "Not evaluated (run without `--skip-eval` to fill this in).", ""], []
    table = headline_section(doc)
    table[0] = f"## Evaluation: {doc.get('primary')} on the test partition [95% CI]"
    return [*table, f"Every metric, split and regime: `{run / 'eval' / 'report.md'}`.", ""], weaknesses(doc)


def render_model_card(run: Path, final: Path, splits: Path | None) -> str:
    version = _read_json(final / "meta.json").get("version", "?")
    evaluation, measured = evaluation_section(run)
    lines = [f"# Model card: PinCLIP `{version}`", "", *model_section(final), *data_section(run, splits),
             "## Intended use", "", INTENDED_USE, "", *evaluation, "## Known weaknesses", "",
             *(f"- {w}" for w in measured), *(f"- {w}" for w in RECIPE_WEAKNESSES), ""]
    return "\n".join(lines)


def write_model_card(run: Path, final: Path, splits: Path | None = None) -> Path | None:
    """Write <final>/MODEL_CARD.md (atomically); None when there is no model. `splits` defaults to the one the
    checkpoint trained on."""
    if not (final / "meta.json").is_file():
        return None
    if splits is None:
        try:
            named = ((yaml.safe_load((final / "config.yaml").read_text()) or {}).get("train") or {})
        except (OSError, yaml.YAMLError):
            named = {}
        given = named.get("splits") or (os.path.join(named["data_dir"], "splits.json") if named.get("data_dir")
                                        and not named.get("pins") else "")
        splits = Path(given) if given else None
    target = final / "MODEL_CARD.md"
    tmp = final / ".MODEL_CARD.md.tmp"
    tmp.write_text(render_model_card(run, final, splits))
    os.replace(tmp, target)
    return target
