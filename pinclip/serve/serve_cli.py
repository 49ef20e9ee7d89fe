"""`pinclip serve`: the HTTP API and search page for an index and the model that embedded it.

    pinclip serve --index runs/demo/index --checkpoint runs/demo/train/final [--port 8000]
    pinclip serve --backend milvus --uri runs/demo/pins.db --checkpoint runs/demo/train/final
    PINCLIP_TOKEN=secret pinclip serve ...     # enables POST and DELETE /pins (or --token-file F)

Pin titles and images for the results come from the pins table (--pins, by default the table the
index's embeddings were made from), held in memory as pin_id -> {title, image}; image files are
served only from the table's folder (and --image-root folders). The index folder is locked while
the server runs; writes go through its log (pinclip.serve.faiss_backend).
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
    from pinclip.serve.backend import open_backend
    from pinclip.serve.embed_cli import load_embedder
    from pinclip.serve.service import image_roots_of

    embedder = load_embedder(args.checkpoint, args.device, args.cache_dir, cache_write=False)
    if args.fast:
        embedder.optimize()
    backend = open_backend(args.backend, args.index, args.uri, args.collection, args.milvus_token)
    try:
        if str(embedder.version) != backend.meta.model_version:
            raise UserError(f"the index was built with model {backend.meta.model_version}, the checkpoint is "
                            f"{embedder.version}: embed and index again with this checkpoint")
        pins_path = args.pins or default_pins_path(backend)
        pins_meta = load_pins_meta(pins_path) if pins_path else {}
        token = read_token(args.token_file)
        limits = ServeLimits(max_body_bytes=int(args.max_upload_mb * 1024 * 1024), max_k=args.max_k,
                             batch_size=args.batch_size, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                             max_decodes=args.max_decodes)
        app = create_app(embedder, backend, pins_meta, token, limits, image_roots_of(pins_path, args.image_root))
        print(f"serving {len(backend)} pins ({backend.name} {backend.meta.kind}, model {backend.meta.model_version}) "
              f"at http://{args.host}:{args.port}/ ; titles/images from {pins_path or 'nowhere (no pins table)'}; "
              f"POST/DELETE /pins {'enabled' if token else 'disabled (no token)'}", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        backend.close()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="HTTP API and search page (FastAPI)", description=__doc__.split("\n")[0])
    p.add_argument("--index", help="index folder from `pinclip index build` (faiss backend)")
    p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    p.add_argument("--uri", help="milvus: a Milvus Lite file or a server URI")
    p.add_argument("--collection", default="pins", help="milvus: collection name")
    p.add_argument("--milvus-token", help="milvus: user:password or API token of a cluster")
    p.add_argument("--checkpoint", required=True, help="the model folder the index was embedded with")
    p.add_argument("--pins", help="pins table for titles and images (default: the one the embeddings came from)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", help="file holding the bearer token for POST /pins (else env PINCLIP_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="request body limit (default 10 MB)")
    p.add_argument("--max-k", type=int, default=100, help="largest k a request may ask for")
    p.add_argument("--image-root", action="append", help="another folder whose image files may be served")
    p.add_argument("--batch-size", type=int, default=32, help="items per model call across requests (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5 ms)")
    p.add_argument("--max-queue", type=int, default=256, help="items waiting for the model before 503s")
    p.add_argument("--max-decodes", type=int, default=2, help="images decoded at once (bounds memory)")
    p.add_argument("--fast", type=int, default=0, choices=(0, 1),
                   help="1: embed through the fast inference paths (ONNX Runtime when installed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", help="frozen image-feature cache (speeds up pins already seen)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=run)
