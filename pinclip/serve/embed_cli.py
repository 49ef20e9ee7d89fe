"""`pinclip embed`: the batch embedding job from the command line.

    pinclip embed --checkpoint runs/demo/train/final --pins pins.parquet --out runs/demo/embeddings
    pinclip embed ... --backend ray --workers 4      # Ray Data actor pool (pip install 'pinclip[ray]')

Run it again with the same arguments to resume an interrupted job.
"""

from __future__ import annotations

import argparse
import functools
import sys

from pinclip.cli import UserError
from pinclip.data.schema import MAX_IMAGE_PIXELS


def load_embedder(checkpoint: str, device: str = "cpu", cache_dir: str | None = None, cache_write: bool = True):
    """The trained model behind a checkpoint folder; UserError when it cannot be loaded."""
    try:
        from pinclip.models.embedder import Embedder
    except ModuleNotFoundError as err:
        raise UserError(f"the model code is not installed ({err})") from None
    try:
        return Embedder.from_checkpoint(checkpoint, device=device, cache_dir=cache_dir, cache_write=cache_write)
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError) as err:
        raise UserError(f"cannot load checkpoint {checkpoint}: {err}") from None


def run(args: argparse.Namespace) -> int:
    from pinclip.serve.embed import embed_pins_table

    options = dict(shard_size=args.shard_size, keep_fp32=args.fp32, batch_size=args.batch_size,
                   max_image_pixels=args.max_image_pixels, progress=not args.quiet)
    if args.backend == "ray":
        from pinclip.serve.ray_backend import embed_pins_table_ray

        factory = functools.partial(load_embedder, args.checkpoint, args.device, args.cache_dir)
        manifest = embed_pins_table_ray(factory, args.pins, args.out, workers=args.workers, **options)
    else:
        manifest = embed_pins_table(load_embedder(args.checkpoint, args.device, args.cache_dir), args.pins, args.out, **options)
    totals = manifest.totals()
    skipped = ", ".join(f"{n} {reason}" for reason, n in totals["pins_skipped"].items()) or "none"
    print(f"embedded {totals['rows']} pins into {len(manifest.shards)} shards under {args.out} "
          f"(model {manifest.model_version}); skipped: {skipped}; unreadable images: "
          f"{totals['images_unreadable']} (details in manifest.json)", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="embed a pins table into int8 parquet shards (resumable)",
                              description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="trained model folder")
    p.add_argument("--pins", required=True, help="pins table (.parquet, .jsonl or .csv)")
    p.add_argument("--out", required=True, help="output folder for shard-*.parquet and manifest.json")
    p.add_argument("--shard-size", type=int, default=1000, help="pins per shard (default 1000)")
    p.add_argument("--batch-size", type=int, default=64, help="pins per model call (default 64)")
    p.add_argument("--fp32", action="store_true", help="also keep float32 embeddings (*_fp32 columns)")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (with --backend ray)")
    p.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    p.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help="decompression-bomb guard")
    p.add_argument("--cache-dir", help="reuse/fill the frozen image-feature cache in this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
