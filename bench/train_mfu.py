"""Training efficiency: pins/s of one training step of the demo preset and its model FLOP utilization.

    python bench/run.py --out bench --only train_mfu [--quick]

One step is what pinclip/train/trainer.py does: forward in the three modes, the objective, backward,
gradient clipping, AdamW and the LR schedule, on a batch of 128 pins (64 anchors + 64 partners)
built with text_batch from synthetic texts of realistic lengths (title ~8 tokens, description ~24
on 30% of pins, keywords ~12, queries ~5 on half) and random visual tokens (frozen tower: its
features are cached, so it does not run in a step). FLOPs of forward + objective + backward are
counted by torch.utils.flop_counter.FlopCounterMode; MFU = achieved FLOP/s / the measured peak of
a 2048x2048 torch.matmul at the same thread count, timed in the same rounds. bf16 autocast is
measured the same way against the bf16 matmul peak.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import (
    BenchContext,
    BenchResult,
    Target,
    fmt,
    interleaved_times,
    median,
    synthetic_texts,
    synthetic_words,
)
from bench.report import markdown_table

MFU_TARGET = 0.40
PEAK_SIZE = 2048


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


def training_setup(batch_size: int, seed: int = 0):
    """(model, cfg, batch, optimizer, scheduler, assemble) for the demo preset on a synthetic batch;
    assemble() rebuilds the batch from the text states as the trainer does each step."""
    from pinclip.config import load_config
    from pinclip.models.pinclip import PinCLIP
    from pinclip.models.text_states import compute_text_states, text_batch
    from pinclip.train.trainer import build_optimizer

    cfg = load_config(preset="demo", overrides=[f"train.batch_size={batch_size}"])
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


def make_step(model, cfg, batch, optimizer, scheduler, bf16: bool, step_optimizer: bool = True,
              phases: dict[str, list[float]] | None = None):
    """A callable running one training step as the trainer does; returns the loss. With `phases`,
    the wall seconds of forward (+ objective), backward and optimizer are appended to it."""
    from pinclip.train.objective import BatchContext, objective

    anchors, n = cfg.train.batch_size // 2, cfg.train.batch_size
    none = torch.zeros(n, n, dtype=torch.bool)
    ctx = BatchContext(anchors, 0, torch.ones(anchors, dtype=torch.bool), none, none, torch.zeros(n),
                       torch.arange(n))

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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


def count_flops(step) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one call and the per-op counts (forward + backward), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), per_op


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


def paired_rounds(steps: dict, peaks: dict, flops: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Per precision and round: step seconds, and MFU against the matmul peak timed right before and
    right after that step (so both see the same machine load)."""
    out = {k: {"step_s": [], "peak_flops": [], "mfu": []} for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            call, peak_flops = peaks[k]
            before, step_s, after = timed(call), timed(step), timed(call)
            peak = peak_flops / ((before + after) / 2)
            out[k]["step_s"].append(step_s)
            out[k]["peak_flops"].append(peak)
            out[k]["mfu"].append(flops / step_s / peak)
    return out


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



def runnable_steps(model, cfg, batch, optimizer, scheduler, phases: dict) -> tuple[dict, dict[str, str]]:
    """({precision: step} for fp32 and bf16 autocast, {precision: error} for a precision that fails);
    each step runs once here, which is also its warm-up."""
    steps = {"fp32": make_step(model, cfg, batch, optimizer, scheduler, bf16=False, phases=phases),
             "bf16": make_step(model, cfg, batch, optimizer, scheduler, bf16=True)}
    failed = {}
    for precision, step in list(steps.items()):
        try:
            step()
        except RuntimeError as err:  # a precision the model code cannot run is reported, not fatal
            failed[precision] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            del steps[precision]
    return steps, failed


def run(ctx: BenchContext) -> BenchResult:
    batch_size = 16 if ctx.quick else 128
    model, cfg, batch, optimizer, scheduler, assemble = training_setup(batch_size)
    phases: dict[str, list[float]] = {}
    steps, failed = runnable_steps(model, cfg, batch, optimizer, scheduler, phases)
    flops, per_op = count_flops(make_step(model, cfg, batch, optimizer, scheduler, bf16=False, step_optimizer=False))
    peaks = {k: matmul_peak_call(dtype) for k, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
             if k in steps}
    rounds = paired_rounds(steps, peaks, flops, repeats=1 if ctx.quick else 5)
    result = BenchResult("train_mfu", "Training efficiency (demo preset, CPU)")
    for precision, r in rounds.items():
        step_s, peak, mfu = median(r["step_s"]), median(r["peak_flops"]), median(r["mfu"])
        result.figures[precision] = {"pins_per_s": batch_size / step_s, "step_s": step_s, "achieved_flops": flops / step_s,
                                     "matmul_peak_flops": peak, "mfu": mfu, "rounds": r}
        result.table.append({"precision": precision, "pins/s": fmt(batch_size / step_s), "step (s)": fmt(step_s),
                             "model GFLOP/step": fmt(flops / 1e9), "achieved GFLOP/s": fmt(flops / step_s / 1e9),
                             "matmul peak GFLOP/s": fmt(peak / 1e9), "MFU": f"{mfu:.1%}",
                             "MFU range over rounds": f"{min(r['mfu']):.0%}-{max(r['mfu']):.0%}"})
    profile_rows = profile_step(steps["fp32"], steps=1 if ctx.quick else 2)
    result.figures.update({"batch_size": batch_size, "flops_per_step": flops, "profile_fp32": profile_rows,
                           "batch_assembly_s": median(interleaved_times({"a": assemble}, repeats=3)["a"]),
                           "failed": failed,
                           "phases_fp32_s": {k: median(v) for k, v in phases.items()},
                           "flops_by_op": dict(sorted(per_op.items(), key=lambda kv: -kv[1])[:8])})
    return describe(result, failed)


def describe(result: BenchResult, failed: dict[str, str]) -> BenchResult:
    """Target, notes and the profile table from the figures."""
    f = result.figures
    fp32 = f["fp32"]
    result.targets = [Target("MFU, fp32 step vs fp32 matmul peak", f">= {MFU_TARGET:.0%}", f"{fp32['mfu']:.1%}",
                             fp32["mfu"] >= MFU_TARGET)]
    result.notes = [
        f"Batch {f['batch_size']} pins; FLOPs counted for forward + objective + backward (the optimizer's few FLOPs "
        "are not counted, its time is in the step). MFU: median over rounds of the step's FLOP/s over the peak of "
        "2048x2048 torch.matmul timed right before and after that step (same threads, same load).",
        f"Building the batch (text_batch + visual tokens), which the trainer does before each step: "
        f"{f['batch_assembly_s'] * 1e3:.0f} ms ({f['batch_assembly_s'] / fp32['step_s']:.0%} of an fp32 step).",
        f"GEMM-like ops take {gemm_share(f['profile_fp32']):.0%} of the fp32 step's self CPU time.",
        "fp32 step phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in f["phases_fp32_s"].items()) + ".",
    ]
    if "bf16" in f:
        result.notes.append(f"bf16 autocast: {f['bf16']['pins_per_s'] / fp32['pins_per_s']:.2f}x the fp32 pins/s, "
                            f"MFU {f['bf16']['mfu']:.1%} of the bf16 matmul peak.")
    result.notes += [f"{p} step failed, not measured: {e}" for p, e in failed.items()]
    result.markdown = ["Where the fp32 step's time goes (torch.profiler, self CPU time of the top ops):", "",
                       *markdown_table(f["profile_fp32"])]
    return result
