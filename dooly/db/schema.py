"""SQLite schema of a Dooly database, its version, and the migrations between versions
(the PostgreSQL backend, `dooly.db.postgres`, replays the same migrations).

The version lives in `PRAGMA user_version` and the file is tagged with
`PRAGMA application_id`, so an unrelated SQLite file is told apart from ours
without guessing from table names."""
from __future__ import annotations

import functools
import sqlite3
import types
from typing import Callable

from dooly.errors import DoolyInputError

# "DOOL" in ASCII: marks the file as ours in the SQLite header.
APPLICATION_ID = 0x444F4F4C
# how long a writer waits for another process's write to finish
BUSY_S = 30.0

ENV_COLUMNS = ("device_name", "device_kind", "engine", "engine_version", "backend", "dtype",
               "kv_dtype", "block_size", "torch_version", "execution", "threads", "cache")
MEASUREMENT_COLUMNS = ("unit_key", "env_key", "point_json", "median_ms", "p10_ms", "p90_ms",
                       "mean_ms", "std_ms", "samples", "outliers", "status", "reason",
                       "timestamp")
TABLES = ("environments", "units", "measurements", "inventories", "fits", "leases", "captures",
          "host_probes")

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


def _to_v4(conn: sqlite3.Connection) -> None:
    # captured inventories as JSON (`dooly.cache`), so a DB carried to another host
    # analyses its models without capturing them; keyed like the user's capture cache
    conn.execute("""CREATE TABLE captures (
        capture_key    TEXT PRIMARY KEY,
        config_hash    TEXT NOT NULL,
        engine         TEXT NOT NULL,
        inventory_json TEXT NOT NULL,
        timestamp      REAL NOT NULL)""")


def _to_v5(conn: sqlite3.Connection) -> None:
    # the host's speed on a fixed reference workload, read while a sweep, a calibration or
    # a real run went on (dooly.profile.hostspeed): measurements and engine steps taken at
    # different times can be compared against the host state they were taken in
    conn.execute("""CREATE TABLE host_probes (
        env_key    TEXT NOT NULL,
        timestamp  REAL NOT NULL,
        gemm_ms    REAL NOT NULL,
        stream_ms  REAL NOT NULL,
        source     TEXT NOT NULL,
        PRIMARY KEY (env_key, timestamp, source))""")


# MIGRATIONS[i] takes a database at version i to version i + 1. Append, never edit:
# files written by older releases replay the tail of this list when opened.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_to_v1, _to_v2, _to_v3, _to_v4, _to_v5]
SCHEMA_VERSION = len(MIGRATIONS)


MODES = ("create", "write", "read")


def database_error(path: str, err: sqlite3.Error) -> DoolyInputError:
    """One line for an SQLite error on the file at `path`: what the user can do about it."""
    if str(path).startswith(("postgresql://", "postgres://")):
        from dooly.db import postgres  # here: postgres imports this module
        return postgres.database_error(path, err)
    msg = str(err)
    low = msg.lower()
    if "readonly" in low or "read-only" in low:
        return DoolyInputError(path, f"read-only file or directory: cannot write to it ({msg})")
    if "locked" in low or "busy" in low:
        return DoolyInputError(path, f"locked by another process for more than {BUSY_S:.0f} s ({msg})")
    if "full" in low:
        return DoolyInputError(path, f"disk full ({msg})")
    if "file is not a database" in low:
        return DoolyInputError(path, f"not a Dooly database ({msg})")
    if isinstance(err, sqlite3.OperationalError) and "malformed" not in low and "corrupt" not in low:
        return DoolyInputError(path, f"cannot open or access the database ({msg})")
    return DoolyInputError(path, f"damaged: {msg}; run `dooly db check {path}`")


def guarded(cls):
    """Every method of `cls` turns an SQLite error into one DoolyInputError naming the
    file (a damaged page met halfway through a read, a read-only file on a write).
    IntegrityError is left to the methods that expect it."""
    def wrap(fn):
        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as err:
                raise database_error(self.path, err) from None
        return method
    for name, fn in list(vars(cls).items()):
        if isinstance(fn, types.FunctionType) and not name.startswith("__"):
            setattr(cls, name, wrap(fn))
    return cls


def prepare(conn: sqlite3.Connection, path: str, mode: str = "create") -> None:
    """Check that `conn` holds a healthy Dooly database and, with mode "create", make or
    upgrade it (an empty file becomes a new database; an older one is migrated). Modes
    "write" and "read" never change the schema: an empty file or an older version is a
    one-line error. Creation and migration run inside BEGIN IMMEDIATE, so two processes
    opening a fresh file at once do not both create the tables; in "create" mode that
    also proves up front that the file can be written."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    try:
        version = _check(conn, path)
        if version:
            _quick_check(conn, path)
        if mode == "create":
            conn.execute("BEGIN IMMEDIATE")
            try:
                _migrate(conn, path, _check(conn, path))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            # WAL lets readers and one writer work at once; it is persistent, so this is
            # set once, and only once the file is known to be ours.
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
        elif version == 0:
            raise DoolyInputError(path, "empty database, not a Dooly database yet (only sweep, "
                                        "calibrate, db import-vidur and a db merge target create one)")
        elif version < SCHEMA_VERSION:
            raise DoolyInputError(path, f"database schema version {version} is older than this "
                                        f"dooly's ({SCHEMA_VERSION}); upgrade it with "
                                        f"`dooly db migrate {path}`")
    except sqlite3.Error as err:
        raise database_error(path, err) from None


def _quick_check(conn: sqlite3.Connection, path: str) -> None:
    # every page's structure, in one linear pass: a damaged page is found when the file
    # is opened, not halfway through a command that happens to read it
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(3)")]
    if rows != ["ok"]:
        raise DoolyInputError(path, f"damaged: {'; '.join(rows)[:200]}; run `dooly db check {path}`")


def _check(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version (0: empty); an error if it is not a Dooly database we
    can read."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    if version == 0:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")]
        if names:
            raise DoolyInputError(path, "not a Dooly database (SQLite file with other "
                                        f"tables: {', '.join(sorted(names)[:5])})")
        return 0
    if app_id != APPLICATION_ID:
        raise DoolyInputError(path, f"not a Dooly database (application_id {app_id:#x})")
    if version > SCHEMA_VERSION:
        raise DoolyInputError(path, f"database schema version {version} is newer than this "
                                    f"dooly supports ({SCHEMA_VERSION}); upgrade dooly")
    if version == SCHEMA_VERSION:
        _check_tables(conn, path)
    return version


def _check_tables(conn: sqlite3.Connection, path: str) -> None:
    missing = set(TABLES) - {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if missing:
        raise DoolyInputError(path, f"not a Dooly database (missing tables: "
                                    f"{', '.join(sorted(missing))})")


def _migrate(conn: sqlite3.Connection, path: str, version: int) -> None:
    if version == 0:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    for step in range(version, SCHEMA_VERSION):
        MIGRATIONS[step](conn)
    if version < SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        _check_tables(conn, path)
