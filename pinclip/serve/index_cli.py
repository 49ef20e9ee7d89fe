"""`pinclip index`: build a FAISS index from embedding shards, or add fresh pins to one.

    pinclip index build --embeddings runs/demo/embeddings --out runs/demo/index [--kind auto] [--field pin]
    pinclip index add --index runs/demo/index --embeddings runs/demo/fresh_embeddings
"""

from __future__ import annotations

import argparse
import sys
import time

FIELDS = ("pin", "image", "text")  # the embeddings of `pinclip embed` (pinclip.serve.embed.EMBEDDING_FIELDS)


def build(args: argparse.Namespace) -> int:
    from pinclip.serve.index import IndexConfig, PinIndex, load_embeddings

    emb = load_embeddings(args.embeddings, args.field)
    started = time.perf_counter()
    config = IndexConfig(kind=args.kind, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                         target_recall=args.target_recall)
    index = PinIndex.build(emb.codes, emb.pin_ids, emb.quant, emb.model_version, args.field, config, (emb.source,))
    index.save(args.out)
    missing = f"; {emb.missing} pins without a {args.field} embedding left out" if emb.missing else ""
    print(f"built a {index.meta.kind} index of {len(index)} {args.field} embeddings (dim {index.meta.dim}, "
          f"model {index.meta.model_version}) in {time.perf_counter() - started:.1f}s at {args.out}; "
          f"params {index.meta.params}{missing}", file=sys.stderr)
    return 0


def add(args: argparse.Namespace) -> int:
    from pinclip.serve.index import PinIndex, load_embeddings

    index = PinIndex.load(args.index)
    emb = load_embeddings(args.embeddings, index.meta.field)
    added = index.add_embeddings(emb)
    index.save(args.index)
    print(f"added {added} pins to {args.index}: now {len(index)} ({index.meta.kind})", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build or extend the FAISS index of pin embeddings",
                              description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="index_command", metavar="{build,add}", required=True)
    b = sub.add_parser("build", help="index the int8 codes of an embedding run")
    b.add_argument("--embeddings", required=True, help="folder written by `pinclip embed`")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--kind", choices=("auto", "flat", "hnsw", "ivf"), default="auto",
                   help="auto: exact below 50k vectors, IVF above (HNSW needs ~2x the codes' memory)")
    b.add_argument("--field", choices=FIELDS, default="pin", help="which embedding to index (default pin)")
    b.add_argument("--hnsw-m", type=int, default=32)
    b.add_argument("--ef-construction", type=int, default=80)
    b.add_argument("--target-recall", type=float, default=0.95, help="recall@10 that efSearch/nprobe are tuned for")
    b.set_defaults(func=build)
    a = sub.add_parser("add", help="add the pins of another embedding run (same model) without a rebuild")
    a.add_argument("--index", required=True, help="index folder to extend (rewritten in place)")
    a.add_argument("--embeddings", required=True, help="folder written by `pinclip embed` for the new pins")
    a.set_defaults(func=add)
