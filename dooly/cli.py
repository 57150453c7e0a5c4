"""`dooly` command line: a thin shell over the Python API. Each command group lives in
its own `cli_*.py` with a `register(subparsers)` that sets `func` on its parser."""
from __future__ import annotations

import argparse
import importlib
import sys

from dooly.errors import DoolyInputError, MissingDataError

COMMAND_MODULES = ("dooly.cli_analyze", "dooly.cli_sweep", "dooly.cli_db", "dooly.cli_fit",
                   "dooly.cli_sim", "dooly.cli_export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dooly", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # command group not built yet
                continue
            raise
        module.register(sub)
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


if __name__ == "__main__":
    sys.exit(main())
