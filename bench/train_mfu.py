"""Training efficiency: pins/s of one training step of the demo preset, and its model FLOP utilization
on the real (unpadded) tokens beside the one on every token slot computed.

    python bench/run.py --out bench --only train_mfu [--quick]

One step is what pinclip/train/trainer.py does: forward in the three modes, the objective, backward,
gradient clipping, AdamW and the LR schedule, on a batch of 128 pins (64 anchors + 64 partners)
built with text_batch from synthetic texts of realistic lengths (title ~8 tokens, description ~24
on 30% of pins, keywords ~12, queries ~5 on half) and random visual tokens (frozen tower: its
features are cached, so it does not run in a step).

PinCLIP.forward sorts text rows and fused pin rows by length and encodes them in buckets of 128
rows, each padded to its longest row. FLOPs:
  computed   forward + objective + backward of the step, counted by torch.utils.flop_counter
             (with CPU flash attention, which it does not know, counted like the other SDPA kernels)
  real       the same step as if each row were encoded at its own length: computed FLOPs minus the
             padding's, from the FLOPs of one encoder row of L tokens (c0 + c1 L + c2 L^2, counted
             at three lengths) and the width each row is padded to
MFU = FLOPs / step seconds / the peak of a 2048x2048 torch.matmul at the same thread count, timed
right before and right after that step in every round; the headline is MFU on real tokens.

Contenders, per precision (fp32, bf16 autocast against the bf16 matmul peak): the trainer's step
(buckets of 128 rows) and the step with smaller length buckets, the fastest of BUCKET_ROWS in a few
selection rounds (the same real FLOPs in less time). Then MIN_ROUNDS rounds (2 with --quick), all
contenders once per round; the 1-minute load average is recorded at each round's start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from bench.common import (
    MIN_ROUNDS,
    BenchContext,
    BenchResult,
    Target,
    fmt,
    fmt_ratio,
    interleaved_times,
    median,
    ratio_stats,
    synthetic_texts,
    synthetic_words,
)
from bench.report import markdown_table

MFU_TARGET = 0.50  # fp32 MFU on real tokens
PEAK_SIZE = 2048
TRAINER_ROWS = 128  # rows per length bucket in PinCLIP.forward (encode_text / encode_pin's default)
BUCKET_ROWS = (64, 32, 16)  # smaller length buckets tried by the selection rounds
SELECT_ROUNDS = 2


def synthetic_pin_texts(rng: np.random.Generator, n: int) -> list[list[str]]:
    """(n, F) field strings in TEXT_FIELDS order: title, description, caption, queries, annotations."""
    titles = synthetic_texts(rng, n, 6)
    descriptions = synthetic_texts(rng, n, 20)
    queries = synthetic_texts(rng, n, 3)
    rows = []
    for i in range(n):
        keywords = ", ".join(synthetic_words(rng, int(rng.integers(3, 7))))
        rows.append([titles[i], descriptions[i] if rng.random() < 0.3 else "", "",
                     queries[i] if rng.random() < 0.5 else "", keywords if rng.random() < 0.97 else ""])
    return rows


def training_setup(batch_size: int, seed: int = 0, preset: str = "demo"):
    """(model, cfg, batch, optimizer, scheduler, assemble) for a preset on a synthetic batch;
    assemble() rebuilds the batch from the text states as the trainer does each step."""
    from pinclip.config import load_config
    from pinclip.models.pinclip import PinCLIP
    from pinclip.models.text_states import compute_text_states, text_batch
    from pinclip.train.trainer import build_optimizer

    cfg = load_config(preset=preset, overrides=[f"train.batch_size={batch_size}"])
    torch.manual_seed(seed)
    model = PinCLIP(cfg.model).eval()  # the trainer keeps eval mode (no dropout)
    rng = np.random.default_rng(seed)
    states = compute_text_states(model.backbone, synthetic_pin_texts(rng, batch_size), progress=False)
    batch = text_batch(states, np.arange(batch_size))
    g = torch.Generator().manual_seed(seed)
    batch["vis"] = torch.randn(batch_size, model.num_visual, model.vision.out_channels, generator=g).abs()
    batch["has_image"] = torch.ones(batch_size, dtype=torch.bool)
    optimizer, scheduler = build_optimizer(model, cfg)
    vis = batch["vis"].numpy().astype(np.float16)  # the trainer gathers cached float16 tokens

    def assemble() -> None:
        rows = np.arange(batch_size)
        text_batch(states, rows)
        torch.from_numpy(vis[rows].astype(np.float32))

    return model, cfg, batch, optimizer, scheduler, assemble


@contextmanager
def length_buckets(model, rows: int) -> Iterator[None]:
    """PinCLIP.forward encoding text and fused pin rows in length buckets of `rows` rows (its default: 128)."""
    from functools import partial

    model.encode_text = partial(type(model).encode_text, model, bucket=rows)
    model.encode_pin = partial(type(model).encode_pin, model, bucket=rows)
    try:
        yield
    finally:
        del model.encode_text, model.encode_pin


def make_step(model, cfg, batch, optimizer, scheduler, bf16: bool, rows: int = TRAINER_ROWS,
              step_optimizer: bool = True, phases: dict[str, list[float]] | None = None):
    """A callable running one training step as the trainer does, length buckets of `rows` rows; returns
    the loss. With `phases`, the wall seconds of forward (+ objective), backward and optimizer are appended."""
    from pinclip.train.objective import BatchContext, objective

    anchors, n = cfg.train.batch_size // 2, cfg.train.batch_size
    none = torch.zeros(n, n, dtype=torch.bool)
    ctx = BatchContext(anchors, 0, torch.ones(anchors, dtype=torch.bool), none, none, torch.zeros(n),
                       torch.arange(n))

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), length_buckets(model, rows):
            out = model(batch)
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        terms = objective(model, out, ctx, cfg.loss, cfg.model.dims)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        t2 = time.perf_counter()
        if step_optimizer:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
        if phases is not None:
            for name, seconds in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", time.perf_counter() - t2)):
                phases.setdefault(name, []).append(seconds)
        return float(terms["loss"].detach())

    return step


# -- FLOPs ------------------------------------------------------------------------------------------
def count_flops(call: Callable[[], object]) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call and the per-op counts, by FlopCounterMode; CPU flash attention (absent
    from its table) is counted with the formulas of the other SDPA kernels."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    counter = FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),  # shapes (B, H, L, d)
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(g, q, k, v)})
    with counter:
        call()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


def quadratic_through(xs: tuple[int, int, int], ys: list[float]) -> np.ndarray:
    """(c0, c1, c2) of the parabola c0 + c1 x + c2 x^2 through three points."""
    x = np.asarray(xs, dtype=np.float64)
    return np.linalg.solve(np.stack([np.ones(3), x, x * x], axis=1), np.asarray(ys, dtype=np.float64))


def row_flops(coeffs: np.ndarray, widths: np.ndarray) -> float:
    """Sum over rows of c0 + c1 L + c2 L^2, the FLOPs of encoding a row of L tokens."""
    w = np.asarray(widths, dtype=np.float64)
    return float((coeffs[0] + coeffs[1] * w + coeffs[2] * w * w).sum())


def encoder_row_coeffs(model, lengths: tuple[int, int, int] = (8, 24, 48)) -> np.ndarray:
    """(c0, c1, c2): FLOPs of forward + backward of one row of L tokens (summary included) through the
    trained layers, pooling and head (PinCLIP._encode), counted at three lengths. Quadratic in L exactly:
    the linear layers are linear in L, attention's two products quadratic."""
    counts = []
    for length in lengths:
        x = torch.randn(1, length - 1, model.backbone.width, requires_grad=True)  # (1, L-1, W): input needs grad,
        mask = torch.ones(1, length - 1, dtype=torch.bool)  # as field-tagged text and projected visual tokens do
        counts.append(count_flops(lambda x=x, mask=mask: model._encode([(x, mask)], "text").sum().backward())[0])
    model.zero_grad(set_to_none=True)
    return quadratic_through(lengths, counts)


def bucket_widths(lengths: np.ndarray, prefix: int, rows: int) -> np.ndarray:
    """(N,) the width each row is encoded at by PinCLIP._bucketed: rows sorted by length, cut every `rows`
    rows, each bucket padded to the summary token + `prefix` visual tokens + its longest row."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    widths = np.zeros(len(lengths), np.int64)
    for lo in range(0, len(order), rows):
        bucket = order[lo : lo + rows]
        widths[bucket] = 1 + prefix + max(int(lengths[bucket].max()), 1 - min(prefix, 1))
    return widths


def encoder_rows(batch: dict[str, torch.Tensor], num_visual: int, fused: bool) -> list[tuple[np.ndarray, int, np.ndarray]]:
    """Per bucketed pass (text rows; fused pin rows if `fused`): (lengths (N,), prefix, real widths (N,)),
    a real width being the summary token + the row's present visual tokens + its text tokens."""
    text = batch["field_mask"].sum(1).numpy()  # (N,)
    passes = [(text, 0, 1 + text)]
    if fused:
        pin = batch["pin_mask"].sum(1).numpy()  # (B,)
        passes.append((pin, num_visual, 1 + num_visual * batch["has_image"].numpy() + pin))
    return passes


def padding_flops(coeffs: np.ndarray, passes: list[tuple[np.ndarray, int, np.ndarray]], rows: int) -> float:
    """FLOPs spent on padding: each row encoded at its bucket's width instead of its real width."""
    return sum(row_flops(coeffs, bucket_widths(lengths, prefix, rows)) - row_flops(coeffs, real)
               for lengths, prefix, real in passes)


def token_slots(passes: list[tuple[np.ndarray, int, np.ndarray]], rows: int) -> tuple[int, int]:
    """(real tokens, token slots encoded) of the bucketed passes."""
    real = sum(int(r.sum()) for _, _, r in passes)
    return real, sum(int(bucket_widths(lengths, prefix, rows).sum()) for lengths, prefix, _ in passes)


# -- timing -----------------------------------------------------------------------------------------
def matmul_peak_call(dtype: torch.dtype, n: int = PEAK_SIZE, reps: int = 3):
    """(callable, FLOPs per call): `reps` n x n matmuls."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)

    def call() -> None:
        for _ in range(reps):
            torch.matmul(a, b)

    return call, 2 * n**3 * reps


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def paired_rounds(steps: dict, peaks: dict, rounds: int) -> tuple[dict[str, dict[str, list[float]]], list[float]]:
    """Per contender and round: step seconds and the matmul peak (FLOP/s) of its precision timed right
    before and right after that step (so both see the same machine load); the load average per round."""
    out = {k: {"step_s": [], "peak_flops": []} for k in steps}
    loads = []
    for _ in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for k, step in steps.items():
            call, peak_flops = peaks[k.split()[0]]
            before, step_s, after = timed(call), timed(step), timed(call)
            out[k]["step_s"].append(step_s)
            out[k]["peak_flops"].append(peak_flops / ((before + after) / 2))
    return out, loads


def profile_step(step, steps: int = 2) -> list[dict[str, str]]:
    """Top ops by self CPU time over `steps` steps (torch.profiler), with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "self CPU share": f"{e.self_cpu_time_total / total:.1%}", "calls per step": e.count // steps}
            for e in events[:12]]


def gemm_share(profile_rows: list[dict[str, str]]) -> float:
    names = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product", "mkldnn")
    return sum(float(r["self CPU share"].rstrip("%")) / 100 for r in profile_rows
               if any(r["op"].startswith(n) for n in names))


def bf16_runs(model, cfg, batch, optimizer, scheduler) -> str | None:
    """None if a bf16 autocast step runs (also its warm-up), else the error."""
    try:
        make_step(model, cfg, batch, optimizer, scheduler, bf16=True)()
    except RuntimeError as err:  # a precision the model code cannot run is reported, not fatal
        return f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return None


def contenders(model, cfg, batch, optimizer, scheduler, precisions: list[str], candidates: tuple[int, ...],
               select_rounds: int) -> tuple[dict, dict, dict]:
    """({"fp32 128": step, "fp32 32": step, ...}: per precision the trainer's buckets and the fastest of
    `candidates` over `select_rounds` rounds after an untimed one, {precision: {rows: median s}} of that
    selection, {phase: [s]} of the fp32 trainer step)."""
    steps, selection, phases = {}, {}, {}
    for precision in precisions:
        bf16 = precision == "bf16"
        calls = {rows: make_step(model, cfg, batch, optimizer, scheduler, bf16, rows) for rows in candidates}
        times = interleaved_times(calls, repeats=select_rounds, warmup=1)
        selection[precision] = {rows: median(t) for rows, t in times.items()}
        best = min(selection[precision], key=selection[precision].get)  # same real FLOPs: the highest MFU
        for rows in (TRAINER_ROWS, best):
            timed_phases = phases if (precision, rows) == ("fp32", TRAINER_ROWS) else None
            steps[f"{precision} {rows}"] = make_step(model, cfg, batch, optimizer, scheduler, bf16, rows,
                                                     phases=timed_phases)
    return steps, selection, phases


def step_flops(model, cfg, batch, optimizer, scheduler, passes, coeffs, row_sizes: set[int]
               ) -> tuple[dict[int, int], float, dict[str, int]]:
    """({rows: computed FLOPs}, real FLOPs, the trainer step's per-op counts). Each bucket size's count
    minus its padding must give the same real FLOPs; a disagreement is an error, not a figure."""
    computed, per_op, real = {}, {}, {}
    for rows in sorted(row_sizes | {TRAINER_ROWS}, reverse=True):
        computed[rows], per_op[rows] = count_flops(make_step(model, cfg, batch, optimizer, scheduler, False, rows,
                                                             step_optimizer=False))
        real[rows] = computed[rows] - padding_flops(coeffs, passes, rows)
    spread = (max(real.values()) - min(real.values())) / real[TRAINER_ROWS]
    if spread > 1e-6:
        raise RuntimeError(f"real-token FLOPs disagree across bucket sizes by {spread:.2e}: {real}")
    return computed, real[TRAINER_ROWS], per_op[TRAINER_ROWS]


def mfu_stats(flops: float, t: dict[str, list[float]]) -> dict[str, float]:
    """MFU per round = the step's time at the matmul peak / its measured time: median, min, max, rounds."""
    return ratio_stats({"at peak": [flops / p for p in t["peak_flops"]], "step": t["step_s"]}, "at peak", "step")


def run(ctx: BenchContext) -> BenchResult:
    batch_size, rounds = (16, 2) if ctx.quick else (128, MIN_ROUNDS)
    model, cfg, batch, optimizer, scheduler, assemble = training_setup(batch_size)
    failed = {"bf16": e} if (e := bf16_runs(model, cfg, batch, optimizer, scheduler)) else {}
    steps, selection, phases = contenders(model, cfg, batch, optimizer, scheduler,
                                          [p for p in ("fp32", "bf16") if p not in failed],
                                          (8,) if ctx.quick else BUCKET_ROWS, 1 if ctx.quick else SELECT_ROUNDS)
    coeffs = encoder_row_coeffs(model)
    passes = encoder_rows(batch, model.num_visual, fused=cfg.model.pin_mode != "late")
    computed, real, per_op = step_flops(model, cfg, batch, optimizer, scheduler, passes, coeffs,
                                        {int(k.split()[1]) for k in steps})
    peaks = {k: matmul_peak_call(dtype) for k, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
             if k not in failed}
    timings, loads = paired_rounds(steps, peaks, rounds)
    result = BenchResult("train_mfu", "Training efficiency (demo preset, CPU): MFU on real tokens")
    for name, t in timings.items():
        rows = int(name.split()[1])
        tokens = token_slots(passes, rows)
        result.figures[name] = {
            "rows_per_bucket": rows, "pins_per_s": batch_size / median(t["step_s"]), "step_s": median(t["step_s"]),
            "computed_flops": computed[rows], "real_token_share": tokens[0] / tokens[1],
            "matmul_peak_flops": median(t["peak_flops"]), "mfu_real": mfu_stats(real, t),
            "mfu_padded": mfu_stats(computed[rows], t), "rounds": t}
    profiled = max((k for k in steps if k.startswith("fp32")), key=lambda k: result.figures[k]["mfu_real"]["median"])
    result.figures.update({
        "batch_size": batch_size, "real_flops": real, "encoder_row_coeffs": coeffs.tolist(), "selection_s": selection,
        "rounds": rounds, "load_per_round": loads, "failed": failed,
        "profile_fp32": profile_step(steps[profiled], steps=1 if ctx.quick else 2), "profiled": profiled,
        "batch_assembly_s": median(interleaved_times({"a": assemble}, repeats=3)["a"]),
        "phases_fp32_s": {k: median(v) for k, v in phases.items()},
        "flops_by_op": dict(sorted(per_op.items(), key=lambda kv: -kv[1])[:8])})
    return describe(result, timings)


def fmt_mfu(stats: dict[str, float]) -> str:
    """'52.1% (48-55% over 10 rounds)'."""
    return f"{stats['median']:.1%} ({stats['min']:.0%}-{stats['max']:.0%} over {stats['rounds']} rounds)"


def describe(result: BenchResult, timings: dict[str, dict[str, list[float]]]) -> BenchResult:
    """Targets, table, notes and the profile from the figures."""
    f = result.figures
    for name in timings:
        g, precision = f[name], name.split()[0]
        result.table.append({
            "precision": precision, "rows per length bucket": f"{g['rows_per_bucket']}"
            + (" (trainer)" if g["rows_per_bucket"] == TRAINER_ROWS else ""),
            "pins/s": fmt(g["pins_per_s"]), "step (s)": fmt(g["step_s"]),
            "GFLOP/step real / computed": f"{f['real_flops'] / 1e9:.0f} / {g['computed_flops'] / 1e9:.0f}",
            "real tokens / slots (text, fused rows)": f"{g['real_token_share']:.0%}",
            "matmul peak GFLOP/s": fmt(g["matmul_peak_flops"] / 1e9),
            "MFU real tokens": fmt_mfu(g["mfu_real"]), "MFU padded": f"{g['mfu_padded']['median']:.1%}"})
    best = {p: max((k for k in timings if k.startswith(p + " ")), key=lambda k: f[k]["mfu_real"]["median"], default=None)
            for p in ("fp32", "bf16")}
    for precision, name in best.items():
        if name is not None:
            g = f[name]
            result.targets.append(Target(
                f"MFU on real tokens, {precision} step ({g['rows_per_bucket']} rows per length bucket; the trainer's: "
                f"{TRAINER_ROWS}) vs {precision} matmul peak", f">= {MFU_TARGET:.0%}" if precision == "fp32" else "report",
                f"{fmt_mfu(g['mfu_real'])}; padded {g['mfu_padded']['median']:.1%}",
                g["mfu_real"]["median"] >= MFU_TARGET if precision == "fp32" else None))
    result.notes = _notes(f, timings, best["fp32"], best["bf16"])
    selection = [{"precision": p, **{f"{rows} rows": f"{s:.3f}" for rows, s in sorted(t.items(), reverse=True)}}
                 for p, t in f["selection_s"].items()]
    result.markdown = ["Selection rounds: median step seconds per bucket size (the fastest is timed above):", "",
                       *markdown_table(selection), "",
                       f"Where the fp32 step's time goes ({f['profiled']} rows; torch.profiler, self CPU time of the "
                       "top ops):", "", *markdown_table(f["profile_fp32"])]
    return result


def _notes(f: dict, timings: dict, fp32: str, bf16: str | None) -> list[str]:
    trainer, coeffs = f"fp32 {TRAINER_ROWS}", f["encoder_row_coeffs"]
    times = {name: t["step_s"] for name, t in timings.items()}
    notes = [
        f"Batch {f['batch_size']} pins. FLOPs of forward + objective + backward (the optimizer's few FLOPs are not "
        "counted, its time is in the step). Computed FLOPs: torch.utils.flop_counter on the step, CPU flash attention "
        "counted like the other SDPA kernels. Real FLOPs: computed minus padding, from the FLOPs of one encoder row "
        f"of L tokens, {coeffs[0] / 1e6:.1f}M + {coeffs[1] / 1e6:.2f}M L + {coeffs[2] / 1e3:.1f}k L^2 (forward + "
        "backward, counted at L = 8, 24, 48); each bucket size's count gives the same real FLOPs.",
        "MFU: per round, the step's FLOP/s over the peak of 2048x2048 torch.matmul of its precision timed right "
        f"before and after it; median with min-max over {f['rounds']} rounds, all contenders once per round"
        + (f". FEWER THAN {MIN_ROUNDS} ROUNDS (--quick): a code check, not a measurement." if f["rounds"] < MIN_ROUNDS
           else "."),
        f"Load average (1 min) at each round's start: {', '.join(map(str, f['load_per_round']))}.",
    ]
    if fp32 != trainer:
        notes.append(f"Length buckets of {f[fp32]['rows_per_bucket']} rows over the trainer's {TRAINER_ROWS}: "
                     f"{fmt_ratio(ratio_stats(times, trainer, fp32))} the fp32 pins/s, same real FLOPs. "
                     "PinCLIP.forward does not take the bucket size, so the trainer still steps with "
                     f"{TRAINER_ROWS}-row buckets; the smaller ones are set here on encode_text / encode_pin.")
    if bf16 is not None:
        notes.append(f"bf16 autocast (the trainer's choice with precision auto on a CPU with AVX512-BF16 or AMX), "
                     f"{bf16} rows: {fmt_ratio(ratio_stats(times, fp32, bf16))} the pins/s of {fp32}.")
    notes += [
        f"Building the batch (text_batch + visual tokens), which the trainer does before each step: "
        f"{f['batch_assembly_s'] * 1e3:.0f} ms ({f['batch_assembly_s'] / f[trainer]['step_s']:.0%} of an fp32 step).",
        f"GEMM-like ops take {gemm_share(f['profile_fp32']):.0%} of the fp32 step's self CPU time ({f['profiled']} rows).",
        "fp32 step phases, trainer's buckets (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in f["phases_fp32_s"].items())
        + ".",
    ]
    return notes + [f"{p} step failed, not measured: {e}" for p, e in f["failed"].items()]

