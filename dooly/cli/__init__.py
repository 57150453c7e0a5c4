"""The `dooly` command line: a thin shell over the Python API. Each command group lives
in its own module here with a `register(subparsers)` that sets `func` on its parser; this
module holds `main`, which turns input errors into one stderr line and exit code 2, and
`run`, the `dooly` command itself. May import every other room; nothing imports it."""
from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sqlite3
import sys
import threading

from dooly.errors import DoolyInputError, MissingDataError

COMMAND_MODULES = ("dooly.cli.analyze", "dooly.cli.sweep", "dooly.cli.db", "dooly.cli.fit",
                   "dooly.cli.sim", "dooly.cli.search", "dooly.cli.export")


class OneLineParser(argparse.ArgumentParser):
    """A flag error is one line, like every other input error (argparse prints its usage
    block first); subparsers are made of this class too."""

    def error(self, message: str):
        text = " ".join(message.split())
        if len(text) > 300:  # e.g. a 5,000-digit number quoted back
            text = text[:297] + "..."
        self.exit(2, f"dooly: error: {text} (see {self.prog} --help)\n")


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dooly", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show vLLM's, torch's and transformers' own log lines (stderr)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for p in list(_parsers(parser))[1:]:  # `dooly analyze ... --verbose` works too
        p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                       help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # a flag error (2) or --help (0), already printed
        return done.code if isinstance(done.code, int) else 2
    from dooly.engines import library_logging
    library_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (DoolyInputError, MissingDataError) as err:
        print(f"dooly: error: {err}", file=sys.stderr)
        return 2
    except sqlite3.Error as err:  # one the Store did not name (it names every one it sees)
        from dooly.db.schema import database_error
        print(f"dooly: error: {database_error(getattr(args, 'db', None) or 'database', err)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dooly: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """`dooly` (and `python -m dooly.cli`): `main`, then exit without Python's teardown of
    its modules. Once vLLM and torch are imported, that teardown (clearing every module,
    running their destructors) takes 1.5 s on this 2-core host after all the work is
    done: a sixth of a first `dooly analyze`. The exit handlers still run (logging,
    temporary files, child processes) and the streams are flushed; with a thread of the
    command's own still running, Python exits as usual and waits for it."""
    code = main()
    if any(t is not threading.main_thread() and not t.daemon and t.is_alive()
           for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe: nothing more to say
            pass
    os._exit(code)
