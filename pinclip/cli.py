"""The `pinclip` command: a table of subcommands, each an importable module with `add_parser`.

    pinclip data validate --pins pins.parquet --boards boards.parquet
    pinclip data demo --out runs/demo/data
    pinclip train --config configs/demo.yaml train.steps=100
    pinclip eval --checkpoint runs/demo/train/final --pins ... --boards ...
    pinclip mix --run runs/demo                             # choose the towers' weight on validation
    pinclip embed --checkpoint C --pins P --out DIR
    pinclip index build --embeddings DIR --out INDEX
    pinclip serve --index INDEX --checkpoint C
    pinclip export --checkpoint C --out DIR                 # merge a VLM run's LoRA adapters
    pinclip demo --out runs/demo
    pinclip run --pins pins.jsonl --boards boards.jsonl --out runs/mine

Each module named below defines `add_parser(subparsers) -> None`, which registers its parser and
sets `func` (a callable taking the parsed namespace and returning an exit code). Heavy imports
(torch, faiss, transformers) stay inside the functions so `pinclip --help` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, str] = {
    "data": "pinclip.data.cli",
    "train": "pinclip.train.cli",
    "eval": "pinclip.eval.cli",
    "mix": "pinclip.eval.mix_cli",
    "embed": "pinclip.serve.embed_cli",
    "index": "pinclip.serve.index_cli",
    "serve": "pinclip.serve.serve_cli",
    "export": "pinclip.export",
    "tune": "pinclip.tune",
    "demo": "pinclip.demo",
    "run": "pinclip.run",
}


class UserError(Exception):
    """A problem with the user's input or configuration: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pinclip", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # stage not installed in this build
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"pinclip {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pinclip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
