"""Measurement store: environments, units, measured points and model inventories,
in one SQLite file. Callers get one from `Store.open(path)`."""
from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from dooly.db import schema
from dooly.db.schema import ENV_COLUMNS, MEASUREMENT_COLUMNS
from dooly.env import Environment, Measurement
from dooly.errors import DoolyInputError
from dooly.unit import Unit

BUSY_TIMEOUT_S = 30.0


def point_json(point: dict) -> str:
    """The exact text a point is stored under (same as Measurement.point_json)."""
    return Measurement("", "", point).point_json


class Store:
    """A Dooly database in one SQLite file: what sweep, fit and simulate may ask of it."""

    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = True) -> "Store":
        """Open (and with `create`, make) the database at `path`."""
        return cls(path, create=create)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = str(path)
        if not create and not Path(path).is_file():
            raise DoolyInputError(path, "no such database file")
        if create:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit: every write below is its own committed transaction, so an
            # interrupted sweep keeps every point it wrote.
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise DoolyInputError(path, f"cannot open database ({err})") from err
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            schema.prepare(self._conn, self.path)
            self._conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            self._conn.close()
            raise

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
        self._conn.execute(f"INSERT OR IGNORE INTO environments ({', '.join(cols)}) "
                           f"VALUES ({', '.join('?' * len(cols))})", values)
        return env.key

    def environments(self) -> list[Environment]:
        return self.find_environment()

    def find_environment(self, **fields) -> list[Environment]:
        unknown = set(fields) - set(ENV_COLUMNS) - {"env_key"}
        if unknown:
            raise ValueError(f"find_environment: unknown fields {sorted(unknown)}")
        where = " AND ".join(f"{k} = ?" for k in fields) or "1"
        rows = self._rows(f"SELECT * FROM environments WHERE {where} ORDER BY env_key",
                          tuple(fields.values()))
        return [Environment.from_json(r) for r in rows]

    # -- units --------------------------------------------------------------------
    def add_unit(self, unit: Unit) -> None:
        # A unit key is a content hash: a second writer of the same key has the same unit.
        self._conn.execute("INSERT OR IGNORE INTO units (unit_key, op, signature_json) "
                           "VALUES (?, ?, ?)", (unit.key, unit.op, json.dumps(unit.to_json())))

    def get_unit(self, key: str) -> Unit | None:
        row = self._conn.execute("SELECT signature_json FROM units WHERE unit_key = ?",
                                 (key,)).fetchone()
        return Unit.from_json(json.loads(row[0])) if row else None

    def units(self) -> list[Unit]:
        return [Unit.from_json(json.loads(r[0])) for r in
                self._conn.execute("SELECT signature_json FROM units ORDER BY unit_key")]

    def units_measured(self, env_key: str) -> set[str]:
        return {r[0] for r in self._conn.execute(
            "SELECT DISTINCT unit_key FROM measurements WHERE env_key = ? AND status = 'ok'",
            (env_key,))}

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
    def _upsert(conn: sqlite3.Connection, rows: list[tuple], newer_only: bool) -> int:
        cols = ", ".join(MEASUREMENT_COLUMNS)
        update = ", ".join(f"{c} = excluded.{c}" for c in MEASUREMENT_COLUMNS[3:])
        cond = " WHERE excluded.timestamp > measurements.timestamp" if newer_only else ""
        before = conn.total_changes
        conn.executemany(
            f"INSERT INTO measurements ({cols}) VALUES ({', '.join('?' * len(MEASUREMENT_COLUMNS))}) "
            f"ON CONFLICT (unit_key, env_key, point_json) DO UPDATE SET {update}{cond}", rows)
        return conn.total_changes - before

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
        where = " AND ".join(f"{k} = ?" for k in filters) or "1"
        rows = self._rows(f"SELECT {', '.join(MEASUREMENT_COLUMNS)} FROM measurements "
                          f"WHERE {where} ORDER BY id", tuple(filters.values()))
        for r in rows:
            r["point"] = json.loads(r.pop("point_json"))
        return [Measurement(**r) for r in rows]

    # -- inventories --------------------------------------------------------------
    def set_inventory(self, config_hash: str, engine: str, model_name: str,
                      counts: dict[str, int]) -> None:
        """Replace the whole inventory of (config_hash, engine)."""
        with self._write() as c:
            c.execute("DELETE FROM inventories WHERE config_hash = ? AND engine = ?",
                      (config_hash, engine))
            c.executemany("INSERT INTO inventories VALUES (?, ?, ?, ?, ?)",
                          [(config_hash, engine, model_name, k, int(n))
                           for k, n in counts.items()])

    def inventory(self, config_hash: str, engine: str) -> dict[str, int]:
        return {r[0]: r[1] for r in self._conn.execute(
            "SELECT unit_key, count FROM inventories WHERE config_hash = ? AND engine = ? "
            "ORDER BY unit_key", (config_hash, engine))}

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
               "COALESCE(SUM(m.status = 'ok'), 0) AS ok, "
               "COALESCE(SUM(m.status = 'failed'), 0) AS failed "
               "FROM units u LEFT JOIN measurements m ON m.unit_key = u.unit_key WHERE 1")
        args: tuple = ()
        if env_key is not None:
            sql, args = sql + " AND m.env_key = ?", args + (env_key,)
        if unit_key is not None:
            sql, args = sql + " AND u.unit_key = ?", args + (unit_key,)
        return self._rows(sql + " GROUP BY u.unit_key, m.env_key ORDER BY u.op, u.unit_key, "
                          "m.env_key", args)

    def merge_from(self, other_path: str | os.PathLike) -> int:
        """Copy every row of another Dooly database in; for the same (unit, env, point)
        the newer timestamp wins. Returns measurement rows inserted or replaced."""
        if Path(other_path).resolve() == Path(self.path).resolve():
            return 0
        with Store(other_path, create=False) as other, self._write() as c:
            for env in other.environments():
                cols = ("env_key",) + ENV_COLUMNS
                c.execute(f"INSERT OR IGNORE INTO environments ({', '.join(cols)}) VALUES "
                          f"({', '.join('?' * len(cols))})",
                          (env.key,) + tuple(getattr(env, k) for k in ENV_COLUMNS))
            c.executemany("INSERT OR IGNORE INTO units VALUES (?, ?, ?)",
                          other._conn.execute("SELECT unit_key, op, signature_json FROM units"))
            c.executemany("INSERT OR REPLACE INTO inventories VALUES (?, ?, ?, ?, ?)",
                          other._conn.execute("SELECT config_hash, engine, model_name, "
                                              "unit_key, count FROM inventories"))
            rows = other._conn.execute(
                f"SELECT {', '.join(MEASUREMENT_COLUMNS)} FROM measurements").fetchall()
            return self._upsert(c, rows, newer_only=True)

    def export_json(self, path: str | os.PathLike) -> None:
        data = {"schema_version": schema.SCHEMA_VERSION,
                "environments": [dict(env_key=e.key, **e.to_json()) for e in self.environments()],
                "units": [u.to_json() for u in self.units()],
                "measurements": [asdict(m) for m in self.measurements(status=None)],
                "inventories": self._rows("SELECT * FROM inventories "
                                          "ORDER BY config_hash, engine, unit_key")}
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def close(self) -> None:
        self._conn.close()
