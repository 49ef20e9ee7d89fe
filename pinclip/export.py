"""`pinclip export`: fold a VLM checkpoint's LoRA adapters into the model, for serving without peft; or
write the three encoders of any embedded-tower checkpoint as ONNX graphs (pinclip/onnx_export.py).

    pinclip export --checkpoint runs/vlm/train/final --out runs/vlm/export [--dtype bf16]
    pinclip export --checkpoint runs/mine/train/final --out runs/mine/onnx --format onnx

A checkpoint of a LoRA run holds only the adapters and PinCLIP's heads; it needs the base model's
folder beside it. The export is a checkpoint folder that stands alone: `vlm/` is a plain Hugging
Face model (safetensors weights W + (alpha/r)·B·A, config, processor files), and model.safetensors
holds the heads. `pinclip embed`, `serve` and `eval` load it like any checkpoint; it keeps the
version of the checkpoint it came from, so its embeddings go into the same index.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

from pinclip.cli import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str = "auto") -> Path:
    """Write the merged, self-contained checkpoint to `out`; returns `out`."""
    from pinclip.models.build import is_vlm
    from pinclip.models.lora import merge_lora
    from pinclip.models.vlm.backbone import model_version
    from pinclip.train.checkpoint import load_model, replace_folder, save_checkpoint, update_meta

    if dtype != "auto" and dtype not in DTYPES:
        raise UserError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    model, cfg, meta = load_model(checkpoint)
    if not is_vlm(model):
        raise UserError(f"{checkpoint}: not a VLM checkpoint; the embedded model's checkpoint is served as it is")
    merged = merge_lora(model.backbone.model)
    target = DTYPES[dtype] if dtype != "auto" else getattr(merged.config, "dtype", None) or torch.float32
    out = Path(out)
    staging = out.with_name(f".{out.name}.export-{os.getpid()}")
    vlm_dir = out.with_name(f".{out.name}.vlm-{os.getpid()}")
    shutil.rmtree(vlm_dir, ignore_errors=True)
    merged.to(target).save_pretrained(vlm_dir)
    model.backbone.processor.save_pretrained(vlm_dir)
    model.backbone.model = merged.to(torch.float32)
    model.backbone.version = model_version(vlm_dir)
    vlm = cfg.model.vlm
    vlm.path, vlm.finetune, vlm.lora_vision, vlm.gradient_checkpointing = "vlm", "frozen", False, False
    save_checkpoint(staging, model, cfg, int(meta.get("step", 0)), meta={
        k: v for k, v in meta.items() if k not in ("version", "step", "dims", "vlm_version")})
    os.replace(vlm_dir, staging / "vlm")
    update_meta(staging, version=meta["version"], exported_from=str(checkpoint), export_dtype=str(target))
    replace_folder(staging, out)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="merge a VLM checkpoint's LoRA adapters, or write ONNX encoders",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder of a VLM run (e.g. <out_dir>/final)")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    p.add_argument("--format", default="hf", choices=("hf", "onnx"),
                   help="hf: a VLM run's adapters merged into a Hugging Face model (default); onnx: image.onnx, "
                        "text.onnx and pin.onnx of an embedded-tower checkpoint")
    p.add_argument("--dtype", default="auto", help="weights of the merged model: auto (the base model's), fp32, "
                                                   "bf16 or fp16")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        from pinclip.onnx_export import export_onnx

        out = export_onnx(args.checkpoint, args.out)
        print(f"exported: {out} (image.onnx, text.onnx, pin.onnx, tokenizer/, onnx.json)")
        return 0
    out = export_checkpoint(args.checkpoint, args.out, args.dtype)
    print(f"exported: {out} (Hugging Face model in {out / 'vlm'})")
    return 0
