"""Measurement store: environments, units and measured points (with what `dooly.db.records`
adds: inventories, captures, host probes, fits), in one SQLite file or a PostgreSQL
database (`postgresql://...`, `dooly.db.postgres`).
Callers get one from `Store.open(path)`; the SQL here is what both backends understand.

Three ways to open: `create=True` (sweep, calibrate, import-vidur, a merge target) may
create the file or upgrade an older schema and must be able to write; `create=False`
(fit, analyze --db, predict) needs an existing Dooly DB at this version and writes only
what the command writes; `readonly=True` (db stats/list/export, a merge source) never
writes. Every database error is one DoolyInputError naming the file (or the URL, its
password hidden)."""
from __future__ import annotations

import json
import os
import sqlite3
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

from dooly.db import check, postgres, schema
from dooly.db.leases import Leases
from dooly.db.merge import Merging
from dooly.db.records import Records
from dooly.db.schema import ENV_COLUMNS, MEASUREMENT_COLUMNS
from dooly.env import Environment, Measurement
from dooly.errors import DoolyInputError
from dooly.unit import Unit

BUSY_TIMEOUT_S = schema.BUSY_S


def copy_db(src, dst) -> Path:
    """A SQLite DB copied for reading elsewhere: `src` and its -wal and -shm files, where
    present (a DB in WAL mode keeps its latest rows beside it), to `dst`; returns `dst`.
    The benches read such copies, never a DB a sweep may be writing."""
    import shutil
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    return Path(dst)


def point_json(point: dict) -> str:
    """The exact text a point is stored under (same as Measurement.point_json)."""
    return Measurement("", "", point).point_json


@schema.guarded
class Store(Leases, Merging, Records):
    """A Dooly database (an SQLite file or a PostgreSQL database): what sweep, fit and
    simulate may ask of it."""

    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = True, readonly: bool = False) -> "Store":
        """Open (and with `create`, make or upgrade) the database at `path`; `readonly`
        opens an existing one that is never written."""
        return cls(path, create=create and not readonly, readonly=readonly)

    @classmethod
    def ensure_writable(cls, path: str | os.PathLike) -> None:
        """Check before long work (a sweep's capture, a calibration's engine run) that
        `path` is, or can become, a Dooly database this process can write. A missing
        file is not created here: only its directory is checked."""
        if postgres.is_url(path):
            cls(path, create=True).close()
            return
        p = Path(path)
        if p.exists():
            cls(p, create=True).close()
            return
        parent = p.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise DoolyInputError(path, f"cannot create the database: {parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DoolyInputError(path, f"cannot create the database: {parent} is not writable")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __init__(self, path: str | os.PathLike, create: bool = True, readonly: bool = False):
        self.readonly = readonly
        create = create and not readonly
        if postgres.is_url(path):
            self.path = postgres.redact(str(path))
            self._conn = postgres.open_database(str(path), "create" if create else
                                                "read" if readonly else "write")
            return
        self.path = str(path)
        p = Path(path)
        if not create:
            # checked before SQLite sees the file: a missing path would be created and
            # an empty file silently initialised, and neither is a read's business
            if not p.exists():
                raise DoolyInputError(path, "no such database file")
            if not p.is_file():
                raise DoolyInputError(path, "not a regular file")
            if p.stat().st_size == 0:
                raise DoolyInputError(path, "empty file, not a Dooly database (only sweep, "
                                            "calibrate, db import-vidur and a db merge target create one)")
        else:
            if p.exists() and not os.access(p, os.W_OK):  # chmod, chattr +i, a read-only mount
                raise DoolyInputError(path, "read-only file: cannot write to it")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise DoolyInputError(path, f"cannot create its directory ({err.strerror})") from None
        try:
            # Autocommit: every write below is its own committed transaction, so an
            # interrupted sweep keeps every point it wrote.
            self._conn = sqlite3.connect(self._target(create), timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None, uri=not create)
        except sqlite3.Error as err:
            raise DoolyInputError(path, f"cannot open database ({err})") from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if readonly:
                self._conn.execute("PRAGMA query_only = ON")
            schema.prepare(self._conn, self.path, "create" if create else "read" if readonly
                           else "write")
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as err:
            self._conn.close()
            raise schema.database_error(self.path, err) from None
        except BaseException:
            self._conn.close()
            raise

    def _target(self, create: bool) -> str:
        """What to connect to. mode=rw never creates the file; a read-only open is
        query_only rather than mode=ro, so that SQLite still removes its WAL side files
        on close instead of leaving them behind. A file nobody may write (as SQLite
        cannot remove side files it made there either) is read as immutable unless a
        writer's WAL is present."""
        if create:
            return self.path
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path))
        if os.access(self.path, os.W_OK):
            return uri + "?mode=rw"
        return uri + ("?mode=ro" if Path(f"{self.path}-wal").exists() else "?mode=ro&immutable=1")

    @contextmanager
    def _write(self):
        # IMMEDIATE takes the write lock up front, so a concurrent writer waits in the
        # busy handler instead of failing on a stale read snapshot.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _rows(self, sql: str, args=()) -> list[dict]:
        cur = self._conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    # -- environments -------------------------------------------------------------
    def add_environment(self, env: Environment) -> str:
        cols = ("env_key",) + ENV_COLUMNS
        values = (env.key,) + tuple(getattr(env, c) for c in ENV_COLUMNS)
        self._conn.execute(f"INSERT INTO environments ({', '.join(cols)}) "
                           f"VALUES ({', '.join('?' * len(cols))}) ON CONFLICT DO NOTHING", values)
        return env.key

    def environments(self) -> list[Environment]:
        return self.find_environment()

    def find_environment(self, **fields) -> list[Environment]:
        unknown = set(fields) - set(ENV_COLUMNS) - {"env_key"}
        if unknown:
            raise ValueError(f"find_environment: unknown fields {sorted(unknown)}")
        where = " AND ".join(f"{k} = ?" for k in fields) or "1 = 1"
        rows = self._rows(f"SELECT * FROM environments WHERE {where} ORDER BY env_key",
                          tuple(fields.values()))
        try:
            return [check.env_from_row(r) for r in rows]
        except ValueError as err:
            raise DoolyInputError(self.path, str(err), "environments") from None

    # -- units --------------------------------------------------------------------
    def add_unit(self, unit: Unit) -> None:
        # A unit key is a content hash: a second writer of one key must bring the same
        # unit (compared canonically), never a different graph kept or lost in silence.
        cur = self._conn.execute("INSERT INTO units (unit_key, op, signature_json) "
                                 "VALUES (?, ?, ?) ON CONFLICT DO NOTHING", (unit.key, unit.op, json.dumps(unit.to_json())))
        stored = self.get_unit(unit.key) if cur.rowcount == 0 else None
        if stored is not None and stored.identity() != unit.identity():
            raise DoolyInputError(self.path, f"unit {unit.key} is stored with a different "
                                  f"signature or graph than the one being added", "units")

    def get_unit(self, key: str) -> Unit | None:
        row = self._conn.execute("SELECT unit_key, op, signature_json FROM units WHERE unit_key = ?",
                                 (key,)).fetchone()
        return self._unit(*row) if row else None

    def units(self) -> list[Unit]:
        return [self._unit(*r) for r in self._conn.execute(
            "SELECT unit_key, op, signature_json FROM units ORDER BY unit_key").fetchall()]

    def _unit(self, key: str, op: str, signature_json: str) -> Unit:
        # every request dim parsed by the bounded parser: a stored dim is data, and one
        # that is not a small request expression stops the command here, naming the unit
        try:
            return check.unit_from_row(key, op, signature_json)
        except ValueError as err:
            raise DoolyInputError(self.path, str(err), "units.signature_json") from None

    def units_measured(self, env_key: str) -> set[str]:
        return {r[0] for r in self._conn.execute(
            "SELECT DISTINCT unit_key FROM measurements WHERE env_key = ? AND status = 'ok'",
            (env_key,))}

    def forget_failed(self, unit_keys, env_key: str) -> int:
        """Drop these units' failed points in `env_key`, so that a sweep tries them again
        (after an upgrade that runs what once failed); returns how many were dropped."""
        with self._conn:
            return self._conn.executemany(
                "DELETE FROM measurements WHERE env_key = ? AND status = 'failed' AND unit_key = ?",
                [(env_key, k) for k in unit_keys]).rowcount

    # -- measurements -------------------------------------------------------------
    def add_measurement(self, m: Measurement) -> None:
        """Insert, or replace the row for the same (unit, env, point)."""
        try:
            self._upsert(self._conn, [self._values(m)], newer_only=False)
        except sqlite3.IntegrityError as err:
            raise ValueError(f"measurement of unit {m.unit_key} in env {m.env_key}: add the "
                             f"unit and environment first ({err})") from err

    @staticmethod
    def _values(m: Measurement) -> tuple:
        return tuple(m.point_json if c == "point_json" else getattr(m, c)
                     for c in MEASUREMENT_COLUMNS)

    @staticmethod
    def _upsert(conn, rows: list[tuple], newer_only: bool) -> int:
        cols = ", ".join(MEASUREMENT_COLUMNS)
        update = ", ".join(f"{c} = excluded.{c}" for c in MEASUREMENT_COLUMNS[3:])
        cond = " WHERE excluded.timestamp > measurements.timestamp" if newer_only else ""
        cur = conn.executemany(
            f"INSERT INTO measurements ({cols}) VALUES ({', '.join('?' * len(MEASUREMENT_COLUMNS))}) "
            f"ON CONFLICT (unit_key, env_key, point_json) DO UPDATE SET {update}{cond}", rows)
        return max(cur.rowcount, 0) if rows else 0  # both backends sum rowcount over the rows

    def replace_measurements(self, unit_key: str, env_key: str,
                             measurements: list[Measurement]) -> None:
        """All of a unit's rows in an environment, swapped in one transaction: an
        interruption leaves the old rows or the new ones, never neither."""
        with self._write() as conn:
            conn.execute("DELETE FROM measurements WHERE unit_key = ? AND env_key = ?",
                         (unit_key, env_key))
            self._upsert(conn, [self._values(m) for m in measurements], newer_only=False)

    def points(self, unit_key: str, env_key: str, status: str | None = None) -> set[str]:
        sql = "SELECT point_json FROM measurements WHERE unit_key = ? AND env_key = ?"
        args = (unit_key, env_key)
        if status is not None:
            sql, args = sql + " AND status = ?", args + (status,)
        return {r[0] for r in self._conn.execute(sql, args)}

    def has_point(self, unit_key: str, env_key: str, point: dict) -> bool:
        """True for ok and failed rows alike, so a resumed sweep skips failed points."""
        return self._conn.execute(
            "SELECT 1 FROM measurements WHERE unit_key = ? AND env_key = ? AND point_json = ?",
            (unit_key, env_key, point_json(point))).fetchone() is not None

    def measurements(self, unit_key: str | None = None, env_key: str | None = None,
                     status: str | None = "ok") -> list[Measurement]:
        """status=None returns ok and failed rows."""
        filters = {"unit_key": unit_key, "env_key": env_key, "status": status}
        filters = {k: v for k, v in filters.items() if v is not None}
        where = " AND ".join(f"{k} = ?" for k in filters) or "1 = 1"
        rows = self._rows(f"SELECT {', '.join(MEASUREMENT_COLUMNS)} FROM measurements "
                          f"WHERE {where} ORDER BY id", tuple(filters.values()))
        out = []
        for r in rows:
            try:
                r["point"] = json.loads(r.pop("point_json"))
                out.append(Measurement(**r))
            except (ValueError, TypeError, RecursionError) as err:
                raise DoolyInputError(self.path, f"measurement of unit {str(r['unit_key'])[:60]}: "
                                      f"{str(err)[:120]}", "measurements") from None
        return out

    # -- whole-database views -----------------------------------------------------
    def stats(self) -> dict[str, int]:
        one = lambda sql: self._conn.execute(sql).fetchone()[0]  # noqa: E731
        return {"environments": one("SELECT COUNT(*) FROM environments"),
                "units": one("SELECT COUNT(*) FROM units"),
                "measurements": one("SELECT COUNT(*) FROM measurements WHERE status = 'ok'"),
                "failed": one("SELECT COUNT(*) FROM measurements WHERE status = 'failed'")}

    def summary(self, env_key: str | None = None, unit_key: str | None = None) -> list[dict]:
        """One row per (unit, env) with ok/failed point counts; units never measured
        appear once with env_key None unless an env filter is given."""
        sql = ("SELECT u.unit_key, u.op, m.env_key, "
               "COALESCE(SUM(CASE WHEN m.status = 'ok' THEN 1 ELSE 0 END), 0) AS ok, "
               "COALESCE(SUM(CASE WHEN m.status = 'failed' THEN 1 ELSE 0 END), 0) AS failed "
               "FROM units u LEFT JOIN measurements m ON m.unit_key = u.unit_key WHERE 1 = 1")
        args: tuple = ()
        if env_key is not None:
            sql, args = sql + " AND m.env_key = ?", args + (env_key,)
        if unit_key is not None:
            sql, args = sql + " AND u.unit_key = ?", args + (unit_key,)
        return self._rows(sql + " GROUP BY u.unit_key, m.env_key ORDER BY u.op, u.unit_key, "
                          "m.env_key", args)

    def close(self) -> None:
        self._conn.close()
