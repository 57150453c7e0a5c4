"""Dooly's own checks of a database's rows, beyond SQLite's integrity check: every row
is data a later command will read, so each is read back the way that command would and
anything it could not use is named. `dooly db check` prints them; `db merge` refuses a
source with any; reads (`Store.units()`) use `unit_from_row` so that a stored dim is
parsed by the bounded parser before anything computes with it."""
from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator

from dooly.db.schema import ENV_COLUMNS, MEASUREMENT_COLUMNS
from dooly.env import Environment, point_problem
from dooly.symbolic.labels import Label
from dooly.symbolic.symbols import MAX_EXPR_INT, parse_request_expr
from dooly.unit import Unit

_NUMBERS = ("median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "timestamp")
_COUNTS = ("samples", "outliers")


def _json(text, what: str):
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected JSON text, got {type(text).__name__}")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{what}: not valid JSON ({type(err).__name__})") from None


def _graph_syms(obj, depth: int = 0) -> Iterator[str]:
    """The symbolic sizes a fused unit's stored body replays (`{"sym": "T"}`)."""
    if depth > 64:
        raise ValueError("graph: nested deeper than 64")
    if isinstance(obj, dict):
        if isinstance(obj.get("sym"), str):
            yield obj["sym"]
        for v in obj.values():
            yield from _graph_syms(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            yield from _graph_syms(v, depth + 1)


def unit_from_row(key: str, op: str, signature_json: str, strict: bool = False) -> Unit:
    """The unit stored under `key`, its every request dim parsed (bounded, never
    evaluated as code). `strict` (check, merge) also asks that the key is the hash of
    the signature, the op column matches, and the fused body's sizes parse. A
    ValueError names the unit."""
    try:
        obj = _json(signature_json, "signature_json")
        if not isinstance(obj, dict):
            raise ValueError("signature_json: expected a JSON object")
        try:
            unit = Unit.from_json(obj)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"signature_json: not a unit signature ({type(err).__name__}: "
                             f"{str(err)[:60]})") from None
        for t in unit.inputs + unit.outputs:
            for d in t.dims:
                if d.label is Label.CONFIG:
                    if isinstance(d.value_or_expr, bool) or not 0 <= d.value_or_expr <= MAX_EXPR_INT:
                        raise ValueError(f"config dim {d.value_or_expr!r} is not a size")
                else:
                    parse_request_expr(d.value_or_expr)
        if strict:
            if unit.key != key:
                raise ValueError(f"key does not match its signature (recomputed {unit.key})")
            if unit.op != op:
                raise ValueError(f"op column {op!r} does not match the signature's {unit.op!r}")
            for text in _graph_syms(unit.graph):
                parse_request_expr(text)
    except ValueError as err:
        raise ValueError(f"unit {str(key)[:60]}: {err}") from None
    return unit


def env_from_row(row: dict, strict: bool = False) -> Environment:
    key = row.get("env_key")
    try:
        env = Environment.from_json(row)
    except (TypeError, ValueError) as err:
        raise ValueError(f"environment {str(key)[:40]}: {err}") from None
    if strict and env.key != key:
        raise ValueError(f"environment {str(key)[:40]}: key does not match its fields "
                         f"(recomputed {env.key})")
    return env


def measurement_problem(row: dict, units: set[str], envs: set[str]) -> str | None:
    """What is wrong with one measurements row (a dict by MEASUREMENT_COLUMNS), or None."""
    where = f"measurement of unit {str(row['unit_key'])[:60]} at {str(row['point_json'])[:60]}"
    if row["unit_key"] not in units:
        return f"{where}: no such unit in the units table"
    if row["env_key"] not in envs:
        return f"{where}: no such environment {str(row['env_key'])[:40]}"
    try:
        point = _json(row["point_json"], "point_json")
    except ValueError as err:
        return f"{where}: {err}"
    problem = point_problem(point)
    if problem:
        return f"{where}: point_json: {problem}"
    for col in _NUMBERS:
        v = row[col]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{where}: {col} = {v!r} is not a finite number"
    for col in _COUNTS:
        if not isinstance(row[col], int) or row[col] < 0:
            return f"{where}: {col} = {row[col]!r} is not a count"
    if row["status"] not in ("ok", "failed"):
        return f"{where}: status {row['status']!r} is neither 'ok' nor 'failed'"
    if row["status"] == "ok" and row["median_ms"] < 0:
        return f"{where}: negative median_ms"
    return None


def _rows(conn: sqlite3.Connection, sql: str) -> Iterator[dict]:
    cur = conn.execute(sql)
    names = [d[0] for d in cur.description]
    for r in cur:
        yield dict(zip(names, r))


def problems(conn: sqlite3.Connection) -> Iterator[str]:
    """Every row a command could not use, one line each; a table SQLite cannot read is
    one line too (then its rows are not checked)."""
    envs: set[str] = set()
    units: set[str] = set()
    tables = [
        ("environments", f"SELECT env_key, {', '.join(ENV_COLUMNS)} FROM environments"),
        ("units", "SELECT unit_key, op, signature_json FROM units"),
        ("measurements", f"SELECT {', '.join(MEASUREMENT_COLUMNS)} FROM measurements"),
        ("inventories", "SELECT config_hash, engine, unit_key, count FROM inventories"),
        ("fits", "SELECT unit_key, env_key, model_json FROM fits"),
    ]
    for table, sql in tables:
        try:
            for row in _rows(conn, sql):
                problem = _row_problem(table, row, units, envs)
                if problem:
                    yield problem
        except sqlite3.DatabaseError as err:
            yield f"table {table}: cannot be read ({err})"


def _row_problem(table: str, row: dict, units: set[str], envs: set[str]) -> str | None:
    try:
        # a row that exists is known even when it is wrong: its own line says why,
        # and the rows that reference it are not blamed for it
        if table == "environments":
            envs.add(row["env_key"])
            env_from_row(row, strict=True)
        elif table == "units":
            units.add(row["unit_key"])
            unit_from_row(row["unit_key"], row["op"], row["signature_json"], strict=True)
        elif table == "measurements":
            return measurement_problem(row, units, envs)
        elif table == "inventories":
            if row["unit_key"] not in units:
                return f"inventory of {str(row['config_hash'])[:16]}: no such unit {str(row['unit_key'])[:60]}"
            if not isinstance(row["count"], int) or row["count"] < 0:
                return f"inventory of {str(row['config_hash'])[:16]}: count {row['count']!r} is not a count"
        elif table == "fits":
            _json(row["model_json"], f"fit of {str(row['unit_key'])[:60]}: model_json")
    except ValueError as err:
        return str(err)
    return None
