"""Merging and exporting a whole database, for Store (which provides `_conn`, `_write`,
`_rows`, `_upsert` and the readers): rows are checked before anything is copied, and a
merge is one transaction."""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path

from dooly.db import check, postgres, schema
from dooly.db.schema import ENV_COLUMNS, MEASUREMENT_COLUMNS
from dooly.errors import DoolyInputError
from dooly.files import write_whole


def db_identity(path) -> str:
    """What tells two names of one database apart from two databases."""
    if postgres.is_url(path):
        return postgres.redact(str(path))
    return str(Path(path).resolve())



@schema.guarded
class Merging:
    """`merge`, `merge_from`, `problems` and `export_json` of a Store."""

    def merge_from(self, other_path: str | os.PathLike) -> int:
        """Copy every row of another Dooly database in; for the same (unit, env, point)
        the newer timestamp wins. Returns measurement rows inserted or replaced."""
        if db_identity(other_path) == db_identity(self.path):
            return 0
        with type(self)(other_path, readonly=True) as other:
            return self.merge([other])[0]

    def problems(self):
        """Dooly's own checks of every row (`dooly.db.check`), one line each, lazily."""
        return check.problems(self._conn)

    def merge(self, sources: list, checked: bool = False) -> list[int]:
        """Copy every row of each source (opened read-only) in, all in one transaction,
        after checking every row of every source: a source with a unit whose signature
        does not parse or hash to its key, or a measurement with no unit or a number
        that is not finite, is refused whole (naming the row) and nothing is merged.
        For the same (unit, env, point) the newer timestamp wins. Returns, per source,
        the measurement rows inserted or replaced. `checked`: the caller has already
        checked the sources (`problems()`)."""
        own = db_identity(self.path)
        others = [s for s in sources if db_identity(s.path) != own]
        for src in [] if checked else others:
            problem = next(check.problems(src._conn), None)
            if problem:
                raise DoolyInputError(src.path, problem)
        with self._write() as c:
            # a source named twice, or the target itself, adds nothing the second time
            return [self._copy_from(c, s) if s in others else 0 for s in sources]

    def _copy_from(self, c, other) -> int:
        cols = ("env_key",) + ENV_COLUMNS
        try:
            envs = other._conn.execute(f"SELECT {', '.join(cols)} FROM environments").fetchall()
            units = other._conn.execute("SELECT unit_key, op, signature_json FROM units").fetchall()
            inventories = other._conn.execute("SELECT config_hash, engine, model_name, unit_key, "
                                              "count FROM inventories").fetchall()
            rows = other._conn.execute(
                f"SELECT {', '.join(MEASUREMENT_COLUMNS)} FROM measurements").fetchall()
            captures = other._conn.execute("SELECT capture_key, config_hash, engine, inventory_json, "
                                           "timestamp FROM captures").fetchall()
            probes = other._conn.execute("SELECT env_key, timestamp, gemm_ms, stream_ms, source "
                                         "FROM host_probes").fetchall()
        except sqlite3.Error as err:
            raise schema.database_error(other.path, err) from None
        c.executemany(f"INSERT INTO environments ({', '.join(cols)}) VALUES "
                      f"({', '.join('?' * len(cols))}) ON CONFLICT DO NOTHING", envs)
        c.executemany("INSERT INTO units (unit_key, op, signature_json) VALUES (?, ?, ?) "
                      "ON CONFLICT DO NOTHING", units)
        c.executemany("INSERT INTO inventories (config_hash, engine, model_name, unit_key, count) "
                      "VALUES (?, ?, ?, ?, ?) ON CONFLICT (config_hash, engine, unit_key) DO UPDATE "
                      "SET model_name = excluded.model_name, count = excluded.count", inventories)
        c.executemany("INSERT INTO captures (capture_key, config_hash, engine, inventory_json, timestamp) "
                      "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", captures)
        c.executemany("INSERT INTO host_probes (env_key, timestamp, gemm_ms, stream_ms, source) "
                      "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", probes)
        return self._upsert(c, rows, newer_only=True)

    def export_json(self, path: str | os.PathLike) -> None:
        data = {"schema_version": schema.SCHEMA_VERSION,
                "environments": [dict(env_key=e.key, **e.to_json()) for e in self.environments()],
                "units": [u.to_json() for u in self.units()],
                "measurements": [asdict(m) for m in self.measurements(status=None)],
                "inventories": self._rows("SELECT * FROM inventories "
                                          "ORDER BY config_hash, engine, unit_key")}
        write_whole(path, json.dumps(data, indent=1, sort_keys=True))
