"""Shared pieces of the benchmarks: timing (medians, interleaved A/B runs), machine info, results.

Every benchmark module has `run(ctx: BenchContext) -> BenchResult`; bench/run.py calls them,
then writes results.json and results.md with `write_results`.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BenchContext:
    out: Path  # where results.json / results.md go
    quick: bool = False  # small sizes: checks the code in well under two minutes
    demo_run: Path = REPO / "runs" / "demo"  # the demo run whose outputs some benchmarks read
    checkpoint: Path | None = None  # a trained model for text/quant benchmarks (default: demo's final)


@dataclass
class Target:
    """One target of the issue: what is measured, the goal, the measured value, met or not."""

    name: str
    goal: str
    value: str
    met: bool | None  # None: not measured here (input absent)


@dataclass
class BenchResult:
    name: str
    title: str
    targets: list[Target] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)  # rows of the detail table
    figures: dict[str, Any] = field(default_factory=dict)  # raw numbers for results.json
    notes: list[str] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)  # free paragraphs after the notes
    seconds: float = 0.0
    load_before: float = 0.0  # 1-minute load average when it started
    load_after: float = 0.0  # 1-minute load average when it ended
    busy_before: list[str] = field(default_factory=list)  # other processes using CPU when it started
    error: str | None = None


def median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear interpolation, numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def interleaved_times(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each call, run round-robin (A, B, C, A, B, C, ...) so that a change in the
    machine's load hits every contender alike; `warmup` untimed rounds first."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], baseline: str, candidate: str) -> float:
    """Median over rounds of baseline_time / candidate_time (a speed-up > 1 favours the candidate)."""
    return median([b / c for b, c in zip(times[baseline], times[candidate])])


def timed_rounds(calls: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, list[float]], list[float]]:
    """Wall seconds of every call in each of `rounds` alternating rounds (after one untimed round), and the
    1-minute load average at each round's start."""
    interleaved_times(calls, repeats=0, warmup=1)
    times: dict[str, list[float]] = {name: [] for name in calls}
    loads = []
    for _ in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for name, seconds in interleaved_times(calls, repeats=1, warmup=0).items():
            times[name] += seconds
    return times, loads


MIN_ROUNDS = 10  # a ratio is the median of at least this many alternating rounds


def ratio_stats(times: dict[str, list[float]], baseline: str, candidate: str) -> dict[str, float]:
    """{"median", "min", "max", "rounds"} of baseline_time / candidate_time over the rounds of
    `interleaved_times` (> 1 favours the candidate). A ratio quoted anywhere carries its min-max."""
    ratios = [b / c for b, c in zip(times[baseline], times[candidate])]
    if not ratios:
        raise ValueError(f"no rounds timed for {baseline!r} / {candidate!r}")
    return {"median": median(ratios), "min": float(min(ratios)), "max": float(max(ratios)), "rounds": len(ratios)}


def fmt_ratio(stats: dict[str, float]) -> str:
    """'1.42x (1.30-1.55x over 10 rounds)'."""
    return f"{stats['median']:.2f}x ({stats['min']:.2f}-{stats['max']:.2f}x over {stats['rounds']} rounds)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def busy_processes(min_cpu: float = 20.0) -> list[str]:
    """Other processes using at least min_cpu % of a core right now (from `ps`), for the notes."""
    import subprocess

    try:
        text = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    busy = []
    for line in text.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[0]) != os.getpid() and float(parts[1]) >= min_cpu:
            busy.append(f"{parts[1]}% {parts[2][:90]}")
    return busy


def machine_info() -> dict[str, Any]:
    import torch

    flags = cpu_flags()
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "busy_processes": busy_processes(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fmt(value: float, digits: int = 3) -> str:
    """A number with `digits` significant digits, thousands separated."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def result_to_json(result: BenchResult) -> dict[str, Any]:
    return asdict(result)


def result_from_json(d: dict[str, Any]) -> BenchResult:
    d = dict(d)
    d["targets"] = [Target(**t) for t in d.get("targets", [])]
    return BenchResult(**d)


def load_previous(path: Path) -> dict[str, Any]:
    """An earlier results.json (to keep the benchmarks not re-run with --only), or {}."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def trained_checkpoint(ctx: BenchContext) -> Path | None:
    """The checkpoint to measure: --checkpoint, else the demo run's final model, else None."""
    for path in (ctx.checkpoint, ctx.demo_run / "train" / "final"):
        if path is not None and (Path(path) / "meta.json").is_file():
            return Path(path)
    return None


def load_model(ctx: BenchContext) -> tuple[Any, dict[str, Any], str]:
    """(PinCLIP in eval mode, meta, label): the trained checkpoint if any, else the demo preset untrained."""
    from pinclip.cli import UserError

    checkpoint, problem = trained_checkpoint(ctx), ""
    if checkpoint is not None:
        from pinclip.train.checkpoint import load_model as load_checkpoint

        try:
            model, _, meta = load_checkpoint(checkpoint, "cpu")
            return model.eval(), meta, f"trained checkpoint {checkpoint}"
        except ValueError as err:  # a config key this version no longer has
            try:
                return load_older_checkpoint(checkpoint)
            except (ValueError, OSError, KeyError, UserError) as again:
                problem = f"; {checkpoint} unreadable: {err}; {again}"
        except (OSError, KeyError, UserError) as err:
            problem = f"; {checkpoint} unreadable: {err}"
    from pinclip.config import load_config
    from pinclip.models.pinclip import PinCLIP

    cfg = load_config(preset="demo")
    meta = {"version": "demo-untrained", "dims": list(cfg.model.dims)}
    return PinCLIP(cfg.model).eval(), meta, f"demo preset, UNTRAINED (no usable trained checkpoint{problem})"


def _drop_unset_unknown(d: dict, known: Any, where: str, dropped: list[str]) -> dict:
    """d without keys the dataclass `known` lacks, if they are unset (0, false, empty); else ValueError."""
    import dataclasses

    out = {}
    for key, value in d.items():
        if not hasattr(known, key):
            if value:
                raise ValueError(f"config key '{where}{key}' = {value!r} is set but unknown to this version")
            dropped.append(where + key)
        elif dataclasses.is_dataclass(getattr(known, key)) and isinstance(value, dict):
            out[key] = _drop_unset_unknown(value, getattr(known, key), f"{where}{key}.", dropped)
        else:
            out[key] = value
    return out


def load_older_checkpoint(checkpoint: Path) -> tuple[Any, dict[str, Any], str]:
    """A checkpoint whose config.yaml has keys this version removed, all unset: loaded without them."""
    import tempfile

    import yaml

    from pinclip.config import Config
    from pinclip.train.checkpoint import load_model as load_checkpoint

    dropped: list[str] = []
    config = _drop_unset_unknown(yaml.safe_load((checkpoint / "config.yaml").read_text()), Config(), "", dropped)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("model.safetensors", "meta.json"):
            os.symlink((checkpoint / name).resolve(), Path(tmp) / name)
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        model, _, meta = load_checkpoint(tmp, "cpu")
    return model.eval(), meta, f"trained checkpoint {checkpoint} (older config; unset keys dropped: {', '.join(dropped)})"


def synthetic_words(rng: np.random.Generator, count: int) -> list[str]:
    """`count` English-looking words drawn from the MiniLM vocabulary (whole words, 3+ letters)."""
    from pinclip.models.backbone import minilm_folder

    vocab = [w for w in (Path(minilm_folder()) / "vocab.txt").read_text().split("\n")
             if w.isalpha() and w.isascii() and len(w) >= 3]
    return [vocab[i] for i in rng.integers(0, len(vocab), count)]


def synthetic_texts(rng: np.random.Generator, n: int, mean_words: float, sep: str = " ") -> list[str]:
    """n texts of Poisson(mean_words) >= 1 random words each."""
    lengths = np.maximum(1, rng.poisson(mean_words, n))
    words = synthetic_words(rng, int(lengths.sum()))
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [sep.join(words[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def demo_title_keyword_pairs(ctx: BenchContext, limit: int) -> tuple[list[str], list[str], str]:
    """(titles, keywords) of up to `limit` demo pins having both, in catalog order; synthetic if absent."""
    path = ctx.demo_run / "data" / "pins.parquet"
    if path.is_file():
        import pyarrow.parquet as pq

        from pinclip.data.schema import field_text

        table = pq.read_table(path, columns=["title", "annotations"]).to_pydict()
        pairs = [(field_text(t), field_text(a)) for t, a in zip(table["title"], table["annotations"])
                 if field_text(t) and field_text(a)]
        if pairs:
            rng = np.random.default_rng(0)
            keep = np.sort(rng.choice(len(pairs), size=min(limit, len(pairs)), replace=False))
            return [pairs[i][0] for i in keep], [pairs[i][1] for i in keep], f"real demo texts ({path})"
    rng = np.random.default_rng(0)
    titles = synthetic_texts(rng, limit, 6)
    keywords = [", ".join(t.split()[:3] + synthetic_words(rng, 2)) for t in titles]  # shares words with its title
    return titles, keywords, "synthetic texts (no demo data found)"
