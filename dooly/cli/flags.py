"""Flag value types with their ranges: a value outside them is argparse's one-line
error naming the flag (`dooly sweep: error: argument --threads: ...`), never silently a
default. Limits that depend on the model (a length beyond its max_position_embeddings)
are checked by the command once the config is read (`ModelConfig.check_length`)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

MAX_THREADS = 4096      # torch would try to start them all
MAX_DIGITS = 18         # longer is never a count; int() of 5,000 digits is itself slow
MAX_TP = 512            # tensor-parallel group sizes (dooly.parallel.MAX_TP)
TP_HELP = ("tensor-parallel size: one rank of a group of N (shard shapes, collectives); "
           "default 1")


def int_range(lo: int, hi: int | None = None, unit: str = ""):
    """An argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        digits = text.strip().lstrip("+-")
        value = int(text) if digits.isdigit() and len(digits) <= MAX_DIGITS else None
        if value is None or value < lo or (hi is not None and value > hi):
            bound = f"from {lo:,} to {hi:,}" if hi is not None else f">= {lo:,}"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}{unit}, got {_quote(text)}")
        return value
    parse.__name__ = "int"
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (not nan, not inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {_quote(text)}")
    return value


def percent(text: str) -> float:
    """An argparse type: a tolerance in percent, a finite number in (0, 100)."""
    value = positive_float(text)
    if value >= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage below 100, got {_quote(text)}")
    return value


ROUTING_HELP = ("expert distribution of mixture-of-experts units: 'balanced' (default) or "
                "'skew:S', a Zipf-like skew (expert e weighted (e+1)^-S)")


def routing(text: str) -> str:
    """An argparse type: a routing spec (dooly.routing)."""
    from dooly.routing import parse_routing
    try:
        return parse_routing(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'balanced' or 'skew:S' with S > 0, got {_quote(text)}") from None


def out_file_problem(path: Path) -> str | None:
    """Why a command could not write the file `path` when it ends, or None. Missing
    folders are made when it writes; a file standing where a folder must be is refused."""
    if path.is_dir():
        return "a folder, expected a file"
    above = next((p for p in path.parents if p.exists()), Path("."))
    if not above.is_dir():
        return f"{_quote(str(above))} is a file, not a folder"
    return None


def out_file(text: str) -> Path:
    """An argparse type: a file the command writes when it ends, checked before any work
    (a sweep of an hour must not end on a path it cannot write)."""
    problem = out_file_problem(Path(text))
    if problem:
        raise argparse.ArgumentTypeError(f"{_quote(text)}: {problem}")
    return Path(text)


def dump_json(path: str | os.PathLike, obj, flag: str, **kw) -> None:
    """Write `obj` as JSON to `path` whole or not at all (dooly.files.write_whole); an
    OSError becomes the one-line DoolyInputError naming the file and `flag`."""
    from dooly.errors import DoolyInputError
    from dooly.files import write_whole
    try:
        write_whole(path, json.dumps(obj, **kw))
    except OSError as err:
        raise DoolyInputError(path, f"cannot write ({err.strerror or err})", flag) from None


def _quote(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


RECHECK_HELP = ("time a few of the model's stored points again on this host now and scale the "
                "prediction by how far the host's speed moved since the sweep (a shared host's "
                "speed moves by the hour; dooly.profile.drift)")


def recheck_host(pred, args) -> None:
    """`--recheck-host`: re-time the anchors, scale the predictor, say by how much."""
    if not getattr(args, "recheck_host", False):
        return
    drift = pred.recheck_host(args.db)
    if drift is None:
        print("--recheck-host: no token-driven points to re-time; predictions unscaled", file=sys.stderr)
        return
    print("host drift since the sweep (now / stored, by step tokens): " + ", ".join(
        f"{t}: {f:.3f}" for t, f in zip(drift.tokens, drift.factors)) + f" ({drift.points} points; "
        f"applied to a one-token step, memory-bound, shrunk towards 1.0: {drift.scale(1):.3f})",
        file=sys.stderr)
