"""`pinclip index`: build a FAISS (or Milvus) index from embedding shards, add fresh pins, compact.

    pinclip index build --embeddings runs/demo/embeddings --out runs/demo/index [--kind auto] [--field pin]
    pinclip index build --embeddings runs/demo/embeddings --backend milvus --uri runs/demo/pins.db
    pinclip index add --index runs/demo/index --embeddings runs/demo/fresh_embeddings
    pinclip index compact --index runs/demo/index
    pinclip index verify --index runs/demo/index
    pinclip index repair --index runs/demo/index --out runs/demo/index-repaired

`add` writes one record to the index folder's write log (all the new pins or none of them; a pin
already in the index is replaced), the same log the server's POST /pins writes to; `compact` folds
the log into a new snapshot. Both refuse a folder that a running server holds open. `verify` checks
every checksum (exit 1 on damage) and `repair` salvages a damaged folder into a new one
(pinclip.serve.index_check).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pinclip.cli import UserError

FIELDS = ("pin", "image", "text")  # the embeddings of `pinclip embed` (pinclip.serve.embed.EMBEDDING_FIELDS)


def build(args: argparse.Namespace) -> int:
    from pinclip.serve.faiss_backend import FaissBackend
    from pinclip.serve.index import IndexConfig, PinIndex, load_embeddings, off_field_queries

    if args.backend == "milvus":
        return build_milvus(args)
    if not args.out:
        raise UserError("index build needs --out (the index folder to write)")
    emb = load_embeddings(args.embeddings, args.field)
    started = time.perf_counter()
    config = IndexConfig(kind=args.kind, hnsw_m=args.hnsw_m, ef_construction=args.ef_construction,
                         target_recall=args.target_recall)
    index = PinIndex.build(emb.codes, emb.pin_ids, emb.quant, emb.model_version, args.field, config, (emb.source,),
                           off_field_queries(args.embeddings, args.field, len(emb.codes), config))
    FaissBackend.create(args.out, index)
    missing = f"; {emb.missing} pins without a {args.field} embedding left out" if emb.missing else ""
    print(f"built a {index.meta.kind} index of {len(index)} {args.field} embeddings (dim {index.meta.dim}, "
          f"model {index.meta.model_version}) in {time.perf_counter() - started:.1f}s at {args.out}; "
          f"params {index.meta.params}{missing}", file=sys.stderr)
    return 0


def build_milvus(args: argparse.Namespace) -> int:
    from pinclip.serve.index import load_embeddings
    from pinclip.serve.milvus_backend import MilvusBackend

    if not args.uri:
        raise UserError("--backend milvus needs --uri (a Milvus Lite file such as runs/demo/pins.db, or http://host:19530)")
    emb = load_embeddings(args.embeddings, args.field)
    started = time.perf_counter()
    backend = MilvusBackend.build(args.uri, args.collection, emb, args.field, token=args.milvus_token,
                                  index_type=args.milvus_index)
    print(f"built Milvus collection {args.collection!r} at {args.uri}: {len(backend)} {args.field} embeddings "
          f"({backend.meta.kind}, model {backend.meta.model_version}) in {time.perf_counter() - started:.1f}s",
          file=sys.stderr)
    backend.close()
    return 0


def add(args: argparse.Namespace) -> int:
    from pinclip.serve.faiss_backend import FaissBackend
    from pinclip.serve.index import load_embeddings

    store = FaissBackend.open(args.index)
    try:
        emb = load_embeddings(args.embeddings, store.meta.field)
        store.index.check_compatible(emb.model_version, emb.quant, emb.dim)
        replaced = sum(p in store for p in emb.pin_ids)
        titles = titles_of(args.embeddings)
        store.put(emb.pin_ids, emb.codes, [{"title": titles.get(p)} for p in emb.pin_ids], emb.model_version)
        print(f"added {len(emb.pin_ids) - replaced} pins and replaced {replaced} in {args.index}: now "
              f"{len(store)} ({store.meta.kind}); written to the index's log", file=sys.stderr)
    finally:
        store.close()
    return 0


def titles_of(embeddings: str) -> dict[str, str | None]:
    """pin_id -> title from the pins table an embedding run was made from (empty if it is gone)."""
    from pinclip.serve.embed import Manifest
    from pinclip.serve.serve_cli import load_pins_meta

    path = Manifest.read(embeddings).pins.get("path")
    if not path or not Path(path).is_file():
        return {}
    return {pin_id: meta["title"] for pin_id, meta in load_pins_meta(path).items()}


def compact(args: argparse.Namespace) -> int:
    from pinclip.serve.faiss_backend import FaissBackend

    store = FaissBackend.open(args.index)
    try:
        store.compact()
        print(f"compacted {args.index}: snapshot {store.manifest['snapshot']} holds {len(store)} pins",
              file=sys.stderr)
    finally:
        store.close()
    return 0


def verify(args: argparse.Namespace) -> int:
    from pinclip.serve.index_check import verify as verify_folder

    report = verify_folder(args.index)
    for line in report.lines():
        print(line, file=sys.stderr)
    pins = f"{report.pins} pins" if report.pins is not None else "pins unknown (snapshot unreadable)"
    print(f"{'DAMAGED' if report.damaged else 'ok'}: {args.index}: {report.records} log records, {pins}",
          file=sys.stderr)
    return 1 if report.damaged else 0


def repair(args: argparse.Namespace) -> int:
    from pinclip.serve.index_check import repair as repair_folder

    report = repair_folder(args.index, args.out)
    for line in report.lines():
        print(line, file=sys.stderr)
    dropped = [f for f in report.findings if f.damage]
    print(f"repaired {args.index} into {args.out}: {report.pins} pins from the snapshot and {report.records} "
          f"log records; {len(dropped)} problem(s) dropped (listed above)", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("index", help="build or extend the FAISS index of pin embeddings",
                              description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="index_command", metavar="{build,add,compact,verify,repair}", required=True)
    b = sub.add_parser("build", help="index the int8 codes of an embedding run")
    b.add_argument("--embeddings", required=True, help="folder written by `pinclip embed`")
    b.add_argument("--out", help="index folder to write (faiss backend)")
    b.add_argument("--backend", choices=("faiss", "milvus"), default="faiss")
    b.add_argument("--uri", help="milvus: a Milvus Lite file (e.g. runs/demo/pins.db) or a server URI")
    b.add_argument("--collection", default="pins", help="milvus: collection name (replaced if it exists)")
    b.add_argument("--milvus-token", help="milvus: user:password or API token of a cluster")
    b.add_argument("--milvus-index", default="auto",
                   help="milvus: index type (auto: FLAT on Milvus Lite, IVF_SQ8 on a cluster)")
    b.add_argument("--kind", choices=("auto", "flat", "hnsw", "ivf"), default="auto",
                   help="auto: exact below 50k vectors, IVF above (HNSW needs ~2x the codes' memory)")
    b.add_argument("--field", choices=FIELDS, default="pin", help="which embedding to index (default pin)")
    b.add_argument("--hnsw-m", type=int, default=32)
    b.add_argument("--ef-construction", type=int, default=80)
    b.add_argument("--target-recall", type=float, default=0.95, help="recall@10 that efSearch/nprobe are tuned for")
    b.set_defaults(func=build)
    a = sub.add_parser("add", help="add the pins of another embedding run (same model) without a rebuild")
    a.add_argument("--index", required=True, help="index folder to extend (through its write log)")
    a.add_argument("--embeddings", required=True, help="folder written by `pinclip embed` for the new pins")
    a.set_defaults(func=add)
    c = sub.add_parser("compact", help="fold the index folder's write log into a new snapshot")
    c.add_argument("--index", required=True, help="index folder")
    c.set_defaults(func=compact)
    v = sub.add_parser("verify", help="check every checksum of an index folder (snapshot files, log records)")
    v.add_argument("--index", required=True, help="index folder")
    v.set_defaults(func=verify)
    r = sub.add_parser("repair", help="salvage what is readable of a damaged index folder into a new one")
    r.add_argument("--index", required=True, help="the damaged index folder (left as it is)")
    r.add_argument("--out", required=True, help="the new index folder to write")
    r.set_defaults(func=repair)
