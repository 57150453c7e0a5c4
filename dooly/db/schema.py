"""SQLite schema of a Dooly database, its version, and the migrations between versions.

The version lives in `PRAGMA user_version` and the file is tagged with
`PRAGMA application_id`, so an unrelated SQLite file is told apart from ours
without guessing from table names."""
from __future__ import annotations

import sqlite3
from typing import Callable

from dooly.errors import DoolyInputError

# "DOOL" in ASCII: marks the file as ours in the SQLite header.
APPLICATION_ID = 0x444F4F4C

ENV_COLUMNS = ("device_name", "device_kind", "engine", "engine_version", "backend", "dtype",
               "kv_dtype", "block_size", "torch_version", "execution", "threads", "cache")
MEASUREMENT_COLUMNS = ("unit_key", "env_key", "point_json", "median_ms", "p10_ms", "p90_ms",
                       "mean_ms", "std_ms", "samples", "outliers", "status", "reason",
                       "timestamp")
TABLES = ("environments", "units", "measurements", "inventories", "fits", "leases")

_V1 = """
CREATE TABLE environments (
    env_key        TEXT PRIMARY KEY,
    device_name    TEXT NOT NULL,
    device_kind    TEXT NOT NULL,
    engine         TEXT NOT NULL,
    engine_version TEXT NOT NULL,
    backend        TEXT NOT NULL,
    dtype          TEXT NOT NULL,
    kv_dtype       TEXT NOT NULL,
    block_size     INTEGER NOT NULL,
    torch_version  TEXT NOT NULL,
    execution      TEXT NOT NULL,
    threads        INTEGER NOT NULL
);
CREATE TABLE units (
    unit_key       TEXT PRIMARY KEY,
    op             TEXT NOT NULL,
    signature_json TEXT NOT NULL
);
CREATE TABLE measurements (
    id         INTEGER PRIMARY KEY,
    unit_key   TEXT NOT NULL REFERENCES units(unit_key),
    env_key    TEXT NOT NULL REFERENCES environments(env_key),
    point_json TEXT NOT NULL,
    median_ms  REAL NOT NULL,
    p10_ms     REAL NOT NULL,
    p90_ms     REAL NOT NULL,
    mean_ms    REAL NOT NULL,
    std_ms     REAL NOT NULL,
    samples    INTEGER NOT NULL,
    outliers   INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    reason     TEXT NOT NULL DEFAULT '',
    timestamp  REAL NOT NULL,
    UNIQUE (unit_key, env_key, point_json)
);
CREATE INDEX measurements_env ON measurements(env_key, status);
CREATE TABLE inventories (
    config_hash TEXT NOT NULL,
    engine      TEXT NOT NULL,
    model_name  TEXT NOT NULL,
    unit_key    TEXT NOT NULL,
    count       INTEGER NOT NULL,
    UNIQUE (config_hash, engine, unit_key)
);
"""


def _to_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1.split(";"):
        if statement.strip():
            conn.execute(statement)


def _to_v2(conn: sqlite3.Connection) -> None:
    # v1 timed every unit with warm caches (the same inputs on every repeat)
    conn.execute("ALTER TABLE environments ADD COLUMN cache TEXT NOT NULL DEFAULT 'warm'")


def _to_v3(conn: sqlite3.Connection) -> None:
    # fitted models stored as data (`dooly fit`): one row per (unit, environment), valid
    # while `fingerprint` matches the measurements it was fitted on
    conn.execute("""CREATE TABLE fits (
        unit_key    TEXT NOT NULL,
        env_key     TEXT NOT NULL REFERENCES environments(env_key),
        fingerprint TEXT NOT NULL,
        model_json  TEXT NOT NULL,
        timestamp   REAL NOT NULL,
        PRIMARY KEY (unit_key, env_key))""")
    # a sweeper's claim on a unit: other live sweepers skip it until it expires
    conn.execute("""CREATE TABLE leases (
        unit_key   TEXT NOT NULL,
        env_key    TEXT NOT NULL,
        owner      TEXT NOT NULL,
        expires    REAL NOT NULL,
        PRIMARY KEY (unit_key, env_key))""")


# MIGRATIONS[i] takes a database at version i to version i + 1. Append, never edit:
# files written by older releases replay the tail of this list when opened.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_to_v1, _to_v2, _to_v3]
SCHEMA_VERSION = len(MIGRATIONS)


def prepare(conn: sqlite3.Connection, path: str) -> None:
    """Check that `conn` holds a Dooly database (or an empty file) and bring it to
    SCHEMA_VERSION. Runs inside BEGIN IMMEDIATE so two processes opening a fresh
    file at once do not both create the tables."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            _check_and_migrate(conn, path)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        # WAL lets readers and one writer work at once; it is persistent, so this is a
        # no-op after the first open. Set only once the file is known to be ours.
        conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.OperationalError as err:
        raise DoolyInputError(path, f"cannot open database ({err})") from err
    except sqlite3.DatabaseError as err:
        raise DoolyInputError(path, f"not a Dooly database ({err})") from err


def _check_and_migrate(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if version == 0:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
        if names:
            raise DoolyInputError(path, "not a Dooly database (SQLite file with other "
                                        f"tables: {', '.join(sorted(names)[:5])})")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    elif app_id != APPLICATION_ID:
        raise DoolyInputError(path, f"not a Dooly database (application_id {app_id:#x})")
    if version > SCHEMA_VERSION:
        raise DoolyInputError(path, f"database schema version {version} is newer than this "
                                    f"dooly supports ({SCHEMA_VERSION}); upgrade dooly")
    for step in range(version, SCHEMA_VERSION):
        MIGRATIONS[step](conn)
    if version < SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    missing = set(TABLES) - {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if missing:
        raise DoolyInputError(path, f"not a Dooly database (missing tables: "
                                    f"{', '.join(sorted(missing))})")
