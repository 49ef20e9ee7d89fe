"""A short check of a VLM backbone on one CUDA device: training steps, then the embedding path.

    scripts/gpu_check.sh /models/Qwen2.5-VL-3B-Instruct      # a local Hugging Face VLM folder
    scripts/gpu_check.sh --random qwen2_5_vl                  # random weights, a ~1.3B language model

It trains the `gpu` preset (LoRA, bf16, gradient checkpointing, vision features computed once as the
cache would) for a few steps on synthetic pins (drawn shapes, 448 px by default, short texts), then embeds
pins in all three modes through the whole model, vision encoder included, and prints steps/s,
training and embedding pins/s, peak GPU memory and MFU; `--out` writes the same as JSON.

MFU counts the language model's matmuls per valid token (PaLM's accounting, appendix B):
forward 2N + 4·L·d·T, backward 2N + 8·L·d·T, plus 2·N_trained for weight gradients, where N is the
decoder's non-embedding parameters, N_trained the trained ones (LoRA: the adapters; full: N), L
layers, d width, T the row's length; recomputation under checkpointing is not counted. Divided by
seconds x the device's peak dense bf16 FLOP/s (a table of known devices, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0,
                    "RTX 4090": 165.0, "RTX 6000 Ada": 364.0, "A6000": 155.0}
RANDOM_SIZE = {"width": 1536, "layers": 28, "heads": 12}  # about Qwen2.5-1.5B's language model


def peak_tflops(device_name: str) -> float | None:
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name.lower() in device_name.lower():
            return tflops
    return None


def training_flops(rows: list[tuple[int, int]], params: int, trained: int, layers: int, width: int) -> float:
    """Model FLOPs of one training step over rows of (valid tokens, row length)."""
    total = 0.0
    for tokens, length in rows:
        total += tokens * (4 * params + 2 * trained + 12 * layers * width * length)
    return total


def decoder_sizes(model) -> tuple[int, int, int, int]:
    """(non-embedding parameters, trained parameters, layers, width) of the language model."""
    text = model.backbone.family.text_model(model.backbone.hf)
    named = [(n, p) for n, p in text.named_parameters() if "embed_tokens" not in n]
    return (sum(p.numel() for n, p in named if "lora_" not in n), sum(p.numel() for _, p in named if p.requires_grad),
            len(text.layers), model.backbone.width)


def synthetic_pins(n: int, size: int, seed: int = 0) -> tuple[list, list[list[str]]]:
    """Drawn shapes (PIL) and short field texts: enough to run the model, nothing to learn from."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colors, shapes = ["red", "green", "blue", "yellow", "purple"], ["circle", "square", "triangle"]
    images, texts = [], []
    for i in range(n):
        color, shape = colors[i % 5], shapes[(i // 5) % 3]
        img = Image.new("RGB", (size, size), "white")
        a, b = int(rng.integers(8, size // 4)), int(rng.integers(3 * size // 4, size - 8))
        (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)([a, a, b, b], fill=color)
        images.append(img)
        texts.append([f"{color} {shape} {i}", f"a {shape} drawn in {color} on white", "", f"{color} {shape}s",
                      f"{color}, {shape}"])
    return images, texts


def plain_batch_context(anchors: int, device: torch.device):
    """The objective's view of `anchors` anchors and as many partners: no duplicates, no shared boards."""
    from pinclip.train.objective import BatchContext

    n = 2 * anchors
    none = torch.zeros(n, n, dtype=torch.bool, device=device)
    return BatchContext(anchors, 0, torch.ones(anchors, dtype=torch.bool, device=device), none, none.clone(),
                        torch.zeros(n, device=device), torch.arange(n, device=device))


def check(folder: str, device: str, steps: int, batch: int, embed_pins: int, overrides: list[str],
          peak: float | None, image_size: int = 448) -> dict:
    from pinclip.config import load_config
    from pinclip.models.build import build_model
    from pinclip.train.objective import objective
    from pinclip.train.trainer import build_optimizer, needed_modes

    cfg = load_config(preset="gpu", overrides=[f"model.vlm.path={folder}", f"train.batch_size={batch}",
                                               f"train.steps={steps}", *overrides])
    dev = torch.device(device)
    bf16 = dev.type == "cuda"
    model = build_model(cfg.model).to(dev).eval()
    optimizer, scheduler = build_optimizer(model, cfg)
    images, texts = synthetic_pins(batch * (steps + 1) + embed_pins, image_size)
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        feats = [f.detached() for lo in range(0, batch * (steps + 1), 16)
                 for f in model.encode_image_features(images[lo : lo + 16])]  # what the vision cache holds
    anchors = batch // 2
    ctx = plain_batch_context(anchors, dev)
    rows: list[tuple[int, int]] = []
    for step in range(steps + 1):  # step 0 warms up (kernels, allocator) and is not timed
        if step == 1:
            _sync(dev)
            started, rows = time.perf_counter(), []
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
        sl = slice(step * batch, (step + 1) * batch)
        model.token_counts = rows
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model({"images": images[sl], "texts": texts[sl], "image_features": feats[sl]},
                        modes=needed_modes(cfg.loss))
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        terms = objective(model, out, ctx, cfg.loss, cfg.model.dims)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
    _sync(dev)
    train_s = time.perf_counter() - started
    model.token_counts = None
    params, trained, layers, width = decoder_sizes(model)
    flops = training_flops(rows, params, trained, layers, width)
    embed_s = _embed_seconds(model, images[-embed_pins:], texts[-embed_pins:], dev, bf16, min(batch, 32))
    result = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "model": folder,
              "decoder_params": params, "trained_params": trained, "steps": steps, "batch_pins": batch,
              "train_steps_per_s": steps / train_s, "train_pins_per_s": steps * batch / train_s,
              "train_tflops_per_s": flops / train_s / 1e12, "embed_pins_per_s": embed_pins / embed_s,
              "loss": float(terms["loss"].detach())}
    if dev.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    if peak:
        result["mfu"] = result["train_tflops_per_s"] / peak
    return result


def _embed_seconds(model, images, texts, dev, bf16, batch) -> float:
    _sync(dev)
    started = time.perf_counter()
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for lo in range(0, len(images), batch):
            model({"images": images[lo : lo + batch], "texts": texts[lo : lo + batch]})
    _sync(dev)
    return time.perf_counter() - started


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", help="a local Hugging Face VLM folder")
    p.add_argument("--random", metavar="FAMILY", help="random weights of this family instead (qwen2_5_vl, ...)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=32, help="pins per training step")
    p.add_argument("--embed-pins", type=int, default=128)
    p.add_argument("--image-size", type=int, default=448, help="side of the synthetic images, pixels")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (only to test this script)")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not in the table")
    p.add_argument("--tiny", action="store_true", help="with --random: the test-sized model")
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("overrides", nargs="*", help="config key=value, e.g. model.vlm.lora_rank=32")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: needs a CUDA device, and torch sees none (torch.cuda.is_available() is False; "
              f"torch {torch.__version__}). Run it on a GPU machine with a CUDA build of torch.", file=sys.stderr)
        return 2
    if bool(args.model) == bool(args.random):
        print("gpu_check: error: give a model folder or --random FAMILY", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if args.random:
            from pinclip.models.vlm.tiny import write_tiny_vlm

            folder = str(write_tiny_vlm(args.random, Path(tmp) / args.random, **({} if args.tiny else RANDOM_SIZE)))
        name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        result = check(folder, args.device, args.steps, args.batch, args.embed_pins, args.overrides,
                       args.peak_tflops or peak_tflops(name), args.image_size)
    for key, value in result.items():
        print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")
    if "mfu" not in result:
        print(f"{'mfu':>20}: unknown peak for {result['device']} (pass --peak-tflops)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
