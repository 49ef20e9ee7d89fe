"""`pinclip serve`: the HTTP API and search page for an index and the model that embedded it.

    pinclip serve --index runs/demo/index --checkpoint runs/demo/train/final [--port 8000]
    PINCLIP_TOKEN=secret pinclip serve ...     # enables POST /pins (or --token-file F)

Pin titles and images for the results come from the pins table (--pins, by default the table the
index's embeddings were made from), held in memory as pin_id -> {title, image}.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pinclip.cli import UserError


def load_pins_meta(pins_path: str | Path) -> dict[str, dict]:
    """pin_id -> {"title", "image" (absolute path or bytes)} from a pins table."""
    from pinclip.data.tables import load_pins

    pins, report = load_pins(str(pins_path), check_images=False)
    report.raise_if_fatal()
    titles = pins.texts["title"]
    return {pin_id: {"title": titles[i], "image": pins.images[i]} for i, pin_id in enumerate(pins.pin_ids)}


def default_pins_path(index) -> str | None:
    """The pins table recorded in the manifest of the index's first embeddings folder, if any."""
    from pinclip.serve.embed import EmbedJobError, Manifest

    for source in index.meta.sources:
        try:
            path = Manifest.read(source).pins["path"]
        except EmbedJobError:
            continue
        if Path(path).is_file():
            return path
    return None


def read_token(token_file: str | None) -> str | None:
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as err:
            raise UserError(f"cannot read --token-file {token_file}: {err.strerror}") from None
        if not token:
            raise UserError(f"--token-file {token_file} is empty")
        return token
    return os.environ.get("PINCLIP_TOKEN", "").strip() or None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from pinclip.serve.app import ServeLimits, create_app
    from pinclip.serve.embed_cli import load_embedder
    from pinclip.serve.index import PinIndex

    index = PinIndex.load(args.index)
    embedder = load_embedder(args.checkpoint, args.device, args.cache_dir, cache_write=False)
    if str(embedder.version) != index.meta.model_version:
        raise UserError(f"the index was built with model {index.meta.model_version}, the checkpoint is "
                        f"{embedder.version}: embed and index again with this checkpoint")
    pins_path = args.pins or default_pins_path(index)
    pins_meta = load_pins_meta(pins_path) if pins_path else {}
    token = read_token(args.token_file)
    limits = ServeLimits(max_body_bytes=int(args.max_upload_mb * 1024 * 1024), max_k=args.max_k)
    app = create_app(embedder, index, pins_meta, token, limits)
    print(f"serving {len(index)} pins ({index.meta.kind}, model {index.meta.model_version}) at "
          f"http://{args.host}:{args.port}/ ; titles/images from {pins_path or 'nowhere (no pins table)'}; "
          f"POST /pins {'enabled' if token else 'disabled (no token)'}", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="HTTP API and search page (FastAPI)", description=__doc__.split("\n")[0])
    p.add_argument("--index", required=True, help="index folder from `pinclip index build`")
    p.add_argument("--checkpoint", required=True, help="the model folder the index was embedded with")
    p.add_argument("--pins", help="pins table for titles and images (default: the one the embeddings came from)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", help="file holding the bearer token for POST /pins (else env PINCLIP_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="request body limit (default 10 MB)")
    p.add_argument("--max-k", type=int, default=100, help="largest k a request may ask for")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", help="frozen image-feature cache (speeds up pins already seen)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)
