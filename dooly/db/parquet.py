"""Parquet interchange: a database as one Parquet file per table plus `provenance.json`
(environments, Dooly version, schema version, each file's row count and SHA-256), the
form a team keeps in git or a dataset hub (`dooly db export --format parquet`, `dooly
db import`). Rows are written sorted and without export times, so exporting the same
rows twice gives the same bytes. Leases are claims of running sweepers, not data: they
are not exported.

An import reads every file with the column names and types below and nothing else (no
pickled Arrow extension types, no pandas metadata), loads the rows into a scratch
in-memory database, checks every row there as `db merge` checks a source, and only
then copies them into the target in one transaction, where a row already present is
kept once (the newer timestamp wins). A bad file is one line naming it and the row."""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
from pathlib import Path

from dooly import __version__
from dooly.db import check
from dooly.db.schema import ENV_COLUMNS, MEASUREMENT_COLUMNS, SCHEMA_VERSION

MIN_SCHEMA_VERSION = 3   # the oldest export whose tables and columns this version reads
from dooly.errors import DoolyInputError

FORMAT, FORMAT_VERSION = "dooly-parquet", 1
PROVENANCE = "provenance.json"
_INTS = {"block_size", "threads", "samples", "outliers", "count"}
_FLOATS = {"median_ms", "p10_ms", "p90_ms", "mean_ms", "std_ms", "timestamp"}
# table -> (columns, order of rows)
TABLES = {
    "environments": (("env_key",) + ENV_COLUMNS, "env_key"),
    "units": (("unit_key", "op", "signature_json"), "unit_key"),
    "measurements": (MEASUREMENT_COLUMNS, "unit_key, env_key, point_json"),
    "inventories": (("config_hash", "engine", "model_name", "unit_key", "count"),
                    "config_hash, engine, unit_key"),
    "fits": (("unit_key", "env_key", "fingerprint", "model_json", "timestamp"), "unit_key, env_key"),
}


def _pyarrow(where):
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise DoolyInputError(where, "Parquet support is not installed "
                                     "(pip install -e '.[parquet]', or ./install.sh)") from None
    return pyarrow, pyarrow.parquet


def _schema(pa, table: str):
    cols = TABLES[table][0]
    return pa.schema([(c, pa.int64() if c in _INTS else pa.float64() if c in _FLOATS else pa.string())
                      for c in cols])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _out_dir(out) -> Path:
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise DoolyInputError(out, "exists and is not a directory", "--out")
    if d.is_dir() and any(d.iterdir()) and not (d / PROVENANCE).is_file():
        raise DoolyInputError(out, "a folder with other files, not an earlier Parquet export: "
                                   "name a new or empty folder", "--out")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DoolyInputError(out, f"cannot create the folder ({err.strerror})", "--out") from None
    return d


def export_parquet(store, out) -> dict:
    """Write every table of `store` under the folder `out`; returns the provenance. Each
    file is written aside and renamed into place, provenance last: an interrupted export
    leaves the earlier export whole, or files that an import refuses by their checksum."""
    pa, pq = _pyarrow("--format")
    d = _out_dir(out)
    conn = store._conn
    conn.execute("BEGIN")  # one snapshot of every table, whatever writers do meanwhile
    try:
        rows = {t: conn.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY {order}").fetchall()
                for t, (cols, order) in TABLES.items()}
    finally:
        conn.execute("COMMIT")
    tables, written = {}, []
    for t, (cols, _) in TABLES.items():
        schema = _schema(pa, t)
        data = pa.table([pa.array([r[i] for r in rows[t]], type=schema.field(i).type)
                         for i in range(len(cols))], schema=schema)
        tmp = d / f".{t}.parquet.tmp"
        pq.write_table(data, tmp, compression="zstd")
        tables[t] = {"file": f"{t}.parquet", "rows": len(rows[t]), "sha256": _sha256(tmp)}
        written.append((tmp, d / f"{t}.parquet"))
    env_cols = TABLES["environments"][0]
    prov = {"format": FORMAT, "format_version": FORMAT_VERSION, "dooly_version": __version__,
            "schema_version": SCHEMA_VERSION,
            "environments": [dict(zip(env_cols, r)) for r in rows["environments"]], "tables": tables}
    for tmp, final in written:
        os.replace(tmp, final)
    tmp = d / f".{PROVENANCE}.tmp"
    tmp.write_text(json.dumps(prov, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, d / PROVENANCE)
    return prov


def read_provenance(folder) -> dict:
    d = Path(folder)
    if not d.is_dir():
        raise DoolyInputError(folder, "no such folder" if not d.exists() else "not a folder")
    from dooly.errors import read_json
    prov = read_json(d / PROVENANCE)
    where = d / PROVENANCE
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        raise DoolyInputError(where, f"not a Dooly Parquet export (format {str(prov.get('format') if isinstance(prov, dict) else None)[:40]!r})", "format")
    if prov.get("format_version") != FORMAT_VERSION:
        raise DoolyInputError(where, f"format version {prov.get('format_version')!r}, this dooly "
                                     f"reads {FORMAT_VERSION}", "format_version")
    # versions 4 and 5 added only the captures and host_probes tables, which exports leave
    # out: a version-3 export holds the same tables and columns
    if prov.get("schema_version") not in range(MIN_SCHEMA_VERSION, SCHEMA_VERSION + 1):
        raise DoolyInputError(where, f"written at schema version {prov.get('schema_version')!r}, "
                                     f"this dooly reads {MIN_SCHEMA_VERSION} to {SCHEMA_VERSION}",
                              "schema_version")
    if not isinstance(prov.get("tables"), dict):
        raise DoolyInputError(where, "expected an object of table files", "tables")
    return prov


def _read_table(pa, pq, d: Path, table: str, entry) -> list[tuple]:
    """The rows of one table's file, after checking its checksum, columns and types."""
    where = d / f"{table}.parquet"
    if not isinstance(entry, dict) or entry.get("file") != f"{table}.parquet":
        raise DoolyInputError(d / PROVENANCE, f"expected {{'file': '{table}.parquet', ...}}", f"tables.{table}")
    if not where.is_file():
        raise DoolyInputError(where, "file not found (listed in provenance.json)")
    if _sha256(where) != entry.get("sha256"):
        raise DoolyInputError(where, "checksum differs from provenance.json: changed or cut short "
                                     "since the export")
    want = _schema(pa, table)
    try:
        have = pq.read_schema(where)
        if [(f.name, f.type) for f in have] != [(f.name, f.type) for f in want]:
            got = ", ".join(f"{f.name}:{f.type}" for f in have)[:200]
            raise DoolyInputError(where, f"columns are not {', '.join(want.names)} with Dooly's types (got {got})")
        data = pq.read_table(where, columns=list(want.names), schema=want)
    except (pa.ArrowException, OSError) as err:
        raise DoolyInputError(where, f"not a readable Parquet file ({str(err)[:160]})") from None
    if data.num_rows != entry.get("rows"):
        raise DoolyInputError(where, f"{data.num_rows} rows, provenance.json lists {entry.get('rows')!r}")
    cols = [data.column(i).to_pylist() for i in range(data.num_columns)]
    return list(zip(*cols)) if cols else []


def load_export(folder):
    """A scratch in-memory Store holding every row of the export at `folder`, checked as
    a merge source is checked; a DoolyInputError names the first bad file or row."""
    from dooly.db.store import Store
    pa, pq = _pyarrow(folder)
    d = Path(folder)
    prov = read_provenance(d)
    scratch = Store(":memory:")
    conn = scratch._conn
    # every row goes in as it is, so that check.problems names a dangling reference
    # instead of the scratch database refusing it without saying which row
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for table, (cols, _) in TABLES.items():
            rows = _read_table(pa, pq, d, table, prov["tables"].get(table))
            sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            conn.execute("BEGIN")
            floats = [i for i, c in enumerate(cols) if c in _FLOATS]
            for i, row in enumerate(rows):
                bad = next((j for j in floats if row[j] is not None and not math.isfinite(row[j])), None)
                if bad is not None:  # SQLite would store a NaN as NULL and blame that instead
                    raise DoolyInputError(d / f"{table}.parquet", f"row {i}: {cols[bad]} = {row[bad]!r} "
                                                                  "is not a finite number")
                try:
                    conn.execute(sql, row)
                except sqlite3.IntegrityError as err:
                    what = f"a duplicate of an earlier row ({err})" if "UNIQUE" in str(err) else str(err)
                    raise DoolyInputError(d / f"{table}.parquet", f"row {i}: {what}") from None
            conn.execute("COMMIT")
        listed = sorted(str(e.get("env_key")) for e in prov.get("environments", []) if isinstance(e, dict))
        stored = sorted(e.key for e in scratch.environments())
        if listed != stored:
            raise DoolyInputError(d / PROVENANCE, "environments differ from environments.parquet's",
                                  "environments")
        orphan = conn.execute("SELECT unit_key, env_key FROM fits WHERE env_key NOT IN "
                              "(SELECT env_key FROM environments)").fetchone()
        if orphan:
            raise DoolyInputError(d / "fits.parquet", f"fit of {orphan[0][:60]}: no such environment "
                                                      f"{orphan[1][:40]}")
        problem = next(check.problems(conn), None)
        if problem:
            raise DoolyInputError(d, problem)
    except BaseException:
        scratch.close()
        raise
    return scratch, prov


def import_parquet(target, folder) -> dict:
    """Copy a checked export into `target` in one transaction. Returns rows added per
    kind (measurements inserted or replaced by newer ones, fits likewise)."""
    scratch, prov = load_export(folder)
    try:
        fits = scratch._conn.execute("SELECT unit_key, env_key, fingerprint, model_json, timestamp "
                                     "FROM fits").fetchall()
        with target._write() as c:
            measured = target._copy_from(c, scratch)
            cur = c.executemany(
                "INSERT INTO fits (unit_key, env_key, fingerprint, model_json, timestamp) VALUES "
                "(?, ?, ?, ?, ?) ON CONFLICT (unit_key, env_key) DO UPDATE SET fingerprint = "
                "excluded.fingerprint, model_json = excluded.model_json, timestamp = excluded.timestamp "
                "WHERE excluded.timestamp > fits.timestamp", fits)
            fitted = max(cur.rowcount, 0) if fits else 0
    finally:
        scratch.close()
    return {"measurements": measured, "fits": fitted,
            "environments": len(prov.get("environments", []))}
