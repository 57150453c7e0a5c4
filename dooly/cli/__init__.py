"""The `dooly` command line: a thin shell over the Python API. Each command group lives
in its own module here with a `register(subparsers)` that sets `func` on its parser; this
module holds `main`, which turns input errors into one stderr line and exit code 2.
May import every other room; nothing imports it."""
from __future__ import annotations

import argparse
import importlib
import sys

from dooly.errors import DoolyInputError, MissingDataError

COMMAND_MODULES = ("dooly.cli.analyze", "dooly.cli.sweep", "dooly.cli.db", "dooly.cli.fit",
                   "dooly.cli.sim", "dooly.cli.export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dooly", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DoolyInputError, MissingDataError) as err:
        print(f"dooly: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dooly: interrupted", file=sys.stderr)
        return 130

