"""`pinclip data`: check user tables, build the demo corpus, make splits for user data.

pinclip data validate --pins pins.parquet --boards boards.parquet [--max-image-pixels N] [--no-image-check]
pinclip data demo --out runs/demo/data [--seed 0] [--max-clipart N] [--max-emoji N]
pinclip data split --pins pins.parquet --boards boards.parquet --out splits.json [--seed 0]
                   [--heldout-kinds category,subgroup] [--no-image-check]
"""

from __future__ import annotations

import argparse

from pinclip.cli import UserError
from pinclip.data.schema import MAX_IMAGE_PIXELS


def run_validate(args: argparse.Namespace) -> int:
    from pinclip.data.validate import format_summary, problem_lines, validate

    summary, report = validate(args.pins, args.boards, args.max_image_pixels, not args.no_image_check)
    print(format_summary(summary))
    if summary.duplicates:
        print("\n".join(summary.duplicates))
    lines = problem_lines(report)
    if lines:
        print(f"\n{len(lines)} problem(s):")
        print("\n".join(lines))
    if report.has_fatal:
        print(f"\ninvalid: {sum(p.fatal for p in report.problems)} fatal problem(s)")
        return 2
    print("\nvalid" + (" (skips reported above)" if lines else ""))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from pinclip.data.demo import DemoConfig, DemoSources, build_demo_corpus

    for name in ("max_clipart", "max_emoji"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    config = DemoConfig(
        seed=args.seed, max_clipart=args.max_clipart, max_emoji=args.max_emoji, workers=max(1, args.workers)
    )
    sources = DemoSources(twemoji_dir=args.twemoji_dir) if args.twemoji_dir else DemoSources()
    summary = build_demo_corpus(args.out, sources=sources, config=config)
    pins = ", ".join(f"{n} {source}" for source, n in sorted(summary.pins_by_source.items()))
    boards = ", ".join(f"{n} {kind}" for kind, n in summary.boards_by_kind.items())
    print(f"pins: {sum(summary.pins_by_source.values())} ({pins})")
    print(f"boards: {sum(summary.boards_by_kind.values())} ({boards}); edges: {summary.edges}")
    print(f"wrote {args.out} in {summary.seconds:.0f} s (see dataset.md and contact_sheet.png)")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from pinclip.data.domain_split import domain_split_tables
    from pinclip.data.groups import DuplicateConfig
    from pinclip.data.reachability import board_reachability, reachability_line, reachability_summary
    from pinclip.data.splits import (
        SplitConfig,
        board_kinds_of,
        split_sizes,
        split_tables,
        split_warnings,
        write_splits,
    )
    from pinclip.data.tables import load_edges, load_pins

    pins, report = load_pins(args.pins, check_images=False)
    edges, edge_report = load_edges(args.boards, pins.pin_ids, pins.skipped_ids)
    report.extend(edge_report)
    report.raise_if_fatal()
    if args.domain_column and args.domain_column not in pins.extra:
        raise UserError(f"{args.pins}: no column {args.domain_column!r} for --domain-column "
                        f"(other columns: {', '.join(sorted(pins.extra)) or 'none'})")
    kinds = tuple(k.strip() for k in args.heldout_kinds.split(",") if k.strip()) if args.heldout_kinds else None
    config = SplitConfig(args.cold_frac, args.val_frac, args.heldout_board_frac, args.val_board_frac, kinds)
    duplicates = DuplicateConfig(args.max_hash_distance, args.max_color_distance)
    splits, groups = split_tables(pins, edges, args.seed, config, duplicates, check_images=not args.no_image_check)
    edge_pins = [pins.pin_ids[i] for i in edges.pin_index.tolist()]
    edge_boards = [edges.board_ids[b] for b in edges.board_index.tolist()]
    if args.domain_column:  # whole domains held out as cold pins instead (the domain-shift experiment)
        splits = domain_split_tables(pins, edges, groups, args.domain_column, args.seed, args.domain_frac, kinds,
                                     args.val_domain_frac)
    write_splits(splits, args.out)
    print(split_sizes(splits, pins.pin_ids, edge_pins, edge_boards))
    if not args.domain_column:
        for warning in split_warnings(splits, board_kinds_of(edges)):
            print(f"warning: {warning}")
    print(reachability_line(reachability_summary(board_reachability(zip(edge_pins, edge_boards), splits))))
    print(f"wrote {args.out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="validate tables, build the demo corpus, make splits", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    check = sub.add_parser("validate", help="check a pins table and board edges, print a summary")
    check.add_argument("--pins", required=True, help="pins table (.parquet, .jsonl or .csv)")
    check.add_argument("--boards", required=True, help="board edges table (.parquet, .jsonl or .csv)")
    check.add_argument(
        "--max-image-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        help="skip images with more pixels than this (decompression-bomb guard)",
    )
    check.add_argument("--no-image-check", action="store_true", help="only check that image files exist")
    check.set_defaults(func=run_validate)

    demo = sub.add_parser(
        "demo", help="build the demo corpus from the installed Open Clip Art and emoji data"
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--max-clipart", type=int, default=None, help="a subset: at most this many clip art pins"
    )
    demo.add_argument(
        "--max-emoji", type=int, default=None, help="a subset: at most this many emoji concepts"
    )
    demo.add_argument("--workers", type=int, default=2, help="processes that render the images")
    demo.add_argument(
        "--twemoji-dir",
        default=None,
        help="unpacked npm emoji-datasource-twitter "
        "(default: data/emoji-datasource-twitter in the repository)",
    )
    demo.set_defaults(func=run_demo)

    split = sub.add_parser("split", help="write splits.json (cold-start pins, val pins, held-out boards)")
    split.add_argument("--pins", required=True)
    split.add_argument("--boards", required=True)
    split.add_argument("--out", required=True, help="splits.json to write")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--cold-frac", type=float, default=0.1, help="share of pins held out entirely")
    split.add_argument("--val-frac", type=float, default=0.05, help="share of pins for choosing settings")
    split.add_argument("--heldout-board-frac", type=float, default=0.15,
                       help="share of eligible boards (>= 3 pins) held out of the training graph, raised (up to "
                            "40%% of them) until 30 test boards are left for Search")
    split.add_argument("--val-board-frac", type=float, default=0.25,
                       help="share of the held-out boards reserved for validation (the rest is test)")
    split.add_argument("--heldout-kinds", default=None, metavar="KINDS",
                       help="comma-separated board_kind values that may be held out (default: every kind but the "
                            "text-defined ones: keyword, concept, query, tag, annotation); hold out boards whose "
                            "membership is not derived from pin text")
    split.add_argument("--max-hash-distance", type=int, default=6,
                       help="near-duplicate images: pHash bits (of 64) that may differ")
    split.add_argument("--max-color-distance", type=float, default=8.0,
                       help="near-duplicate images: mean |difference| of 8x8 colour thumbnails (0-255)")
    split.add_argument("--no-image-check", action="store_true",
                       help="group duplicates by group_id and text only (no image hashing)")
    split.add_argument("--domain-column", default=None, metavar="COLUMN",
                       help="write a domain-shift split instead: whole values of this pins column (e.g. a top-level "
                       "category) held out as cold pins, with the held-out boards lying wholly inside them; save it as "
                       "splits_domain.json beside the tables for `pinclip eval --run R --domain-shift`")
    split.add_argument("--domain-frac", type=float, default=0.15,
                       help="with --domain-column: share of pins in the held-out test domains")
    split.add_argument("--val-domain-frac", type=float, default=0.05,
                       help="with --domain-column: share of pins in the held-out validation domains (val_pins, "
                       "val_boards), for choosing settings on domain-shift validation cells")
    split.set_defaults(func=run_split)
