"""`dooly db ...`: look into, check, export, import and merge measurement databases
(SQLite files or `postgresql://` URLs). Only `merge` and `import` (their target),
`migrate` and `import-vidur` write; the rest open read-only."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dooly.cli.flags import int_range, out_file_problem
from dooly.db import Store, postgres
from dooly.db.merge import db_identity
from dooly.errors import DoolyInputError

MAX_PROBLEMS_SHOWN = 50


def register(subparsers) -> None:
    db = subparsers.add_parser("db", help="inspect, export and merge measurement databases")
    sub = db.add_subparsers(dest="db_command", required=True)

    p = sub.add_parser("stats", help="count environments, units and measured points")
    p.add_argument("--db", required=True, help="database file")
    p.add_argument("--json", action="store_true", help="print counts as one JSON object")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("list", help="units with their ok and failed point counts")
    p.add_argument("--db", required=True, help="database file")
    p.add_argument("--env", help="only this environment key")
    p.add_argument("--unit", help="only this unit key")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="write every table as plain JSON, or as Parquet files")
    p.add_argument("--db", required=True, help="database file or postgresql:// URL")
    p.add_argument("--format", choices=("json", "parquet"), default="json",
                   help="json: one file; parquet: a folder with one file per table and provenance.json")
    p.add_argument("--out", required=True, help="JSON file (--format json) or folder (--format parquet)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="copy a Parquet export's rows into --db, checked as merge checks them")
    p.add_argument("dir", help="a folder written by `dooly db export --format parquet`")
    p.add_argument("--db", required=True, help="database to import into (created if missing)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("merge", help="copy other databases' rows into --db")
    p.add_argument("--db", required=True, help="database file to merge into (created if missing)")
    p.add_argument("others", nargs="+", metavar="OTHER", help="database files to read")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("check", help="SQLite's integrity check and Dooly's own checks of every row")
    p.add_argument("path", nargs="?", help="database file")
    p.add_argument("--db", dest="db_flag", help="database file (as the other db commands take it)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("migrate", help="upgrade a database written by an older dooly to this schema")
    p.add_argument("path", help="database file")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("import-vidur", help="read Vidur's profiling CSVs (mlp.csv) as Dooly units")
    p.add_argument("dir", help="a directory holding <model>/mlp.csv files (searched recursively)")
    p.add_argument("--db", required=True)
    p.add_argument("--tp", type=int_range(1, 1024), default=1, help="tensor-parallel rows to import")
    p.add_argument("--device", choices=("a100", "a40", "h100"),
                   help="the GPU the CSVs were measured on (default: a directory of that name in their path)")
    p.set_defaults(func=cmd_import_vidur)


def cmd_stats(args) -> int:
    with Store.open(args.db, readonly=True) as store:
        counts = store.stats()
    if args.json:
        print(json.dumps(counts))
        return 0
    table = Table(title=args.db)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in counts.items():
        table.add_row(name, str(n))
    Console().print(table)
    return 0


def cmd_list(args) -> int:
    with Store.open(args.db, readonly=True) as store:
        rows = store.summary(env_key=args.env, unit_key=args.unit)
    table = Table(title=f"{args.db}: {len(rows)} rows")
    for name, justify in (("unit", "left"), ("op", "left"), ("ok", "right"),
                          ("failed", "right"), ("env", "left")):
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(r["unit_key"], r["op"], str(r["ok"]), str(r["failed"]), r["env_key"] or "-")
    Console().print(table)
    return 0


def cmd_export(args) -> int:
    problem = out_file_problem(Path(args.out)) if args.format == "json" else None
    if problem:
        raise DoolyInputError(args.out, problem, "--out")
    with Store.open(args.db, readonly=True) as store:
        if args.format == "parquet":
            from dooly.db.parquet import export_parquet
            prov = export_parquet(store, args.out)
            rows = ", ".join(f"{t} {e['rows']}" for t, e in prov["tables"].items())
            print(f"wrote {args.out}: {rows} rows (schema version {prov['schema_version']})")
            return 0
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            store.export_json(args.out)
        except OSError as err:
            raise DoolyInputError(args.out, f"cannot write ({err.strerror or err})", "--out") from None
    print(f"wrote {args.out}")
    return 0


def cmd_import(args) -> int:
    """Every file is read and every row checked before the target is opened (or
    created): a bad export leaves the target exactly as it was."""
    from dooly.db.parquet import import_parquet, load_export
    target_existed = postgres.is_url(args.db) or Path(args.db).exists()
    try:
        load_export(args.dir)[0].close()  # a bad export is refused before the target is opened
        with Store.open(args.db) as store:
            counts = import_parquet(store, args.dir)
    except DoolyInputError as err:
        untouched = "unchanged" if target_existed else "not created"
        raise DoolyInputError(err.path, f"{err.problem}; nothing imported, {args.db} {untouched}",
                              err.field) from None
    print(f"{args.dir}: {counts['measurements']} measurement rows and {counts['fits']} fits added "
          f"to {args.db} ({counts['environments']} environment(s))")
    return 0


def cmd_merge(args) -> int:
    """Every source is opened read-only and checked before the target is opened (or
    created): a bad source leaves the target exactly as it was, and the error says so."""
    sources: list[Store | None] = []  # None: the target itself, named as a source
    target_existed = postgres.is_url(args.db) or Path(args.db).exists()
    try:
        own = db_identity(args.db)
        for other in args.others:
            if db_identity(other) == own:
                sources.append(None)
                continue
            src = Store.open(other, readonly=True)
            sources.append(src)
            problem = next(iter(src.problems()), None)
            if problem:
                raise DoolyInputError(other, problem)
        with Store.open(args.db) as store:
            counts = store.merge([s for s in sources if s is not None], checked=True)
    except DoolyInputError as err:
        untouched = "unchanged" if target_existed else "not created"
        raise DoolyInputError(err.path, f"{err.problem}; nothing merged, {args.db} {untouched}",
                              err.field) from None
    finally:
        for s in sources:
            if s is not None:
                s.close()
    added = iter(counts)
    for other, src in zip(args.others, sources):
        print(f"{other}: {next(added) if src is not None else 0} rows added")
    if len(args.others) > 1:
        print(f"total: {sum(counts)} rows added to {args.db}")
    return 0


def cmd_check(args) -> int:
    """Prints every problem, one a line; exit 0 when there is none, else 2."""
    path = args.path or args.db_flag
    if not path:
        raise DoolyInputError("command line", "name the database file to check", "PATH")
    problems = check_file(path)
    for line in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"{path}: {line}")
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"{path}: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    if problems:
        print(f"{path}: {len(problems)} problem(s)")
        return 2
    print(f"{path}: healthy")
    return 0


def check_file(path: str) -> list[str]:
    """SQLite's full integrity check, then Dooly's own row checks, on a connection that
    never writes (the Store itself refuses a damaged file, so this one goes around it)."""
    from dooly.db import check, schema
    if postgres.is_url(path):
        return postgres.check_database(path)
    p = Path(path)
    if not p.is_file():
        raise DoolyInputError(path, "no such database file" if not p.exists() else "not a regular file")
    if p.stat().st_size == 0:
        raise DoolyInputError(path, "empty file, not a Dooly database")
    try:
        conn = sqlite3.connect(path, timeout=schema.BUSY_S, isolation_level=None)
    except sqlite3.Error as err:
        raise DoolyInputError(path, f"cannot open database ({err})") from None
    try:
        conn.execute("PRAGMA query_only = ON")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.Error as err:  # not a database at all, or its header is lost
            raise schema.database_error(path, err) from None
        try:
            integrity = [r[0] for r in conn.execute("PRAGMA integrity_check(100)")]
        except sqlite3.DatabaseError as err:  # too damaged to walk: the tables say where
            integrity = [str(err)]
        out = [f"SQLite: {line}" for line in integrity if line != "ok"]
        if app_id != schema.APPLICATION_ID:
            return out + [f"not a Dooly database (application_id {app_id:#x})"]
        if version != schema.SCHEMA_VERSION:
            return out + [f"schema version {version}, this dooly's is {schema.SCHEMA_VERSION}"
                          + (f": run `dooly db migrate {path}`" if version < schema.SCHEMA_VERSION else "")]
        return out + list(check.problems(conn))
    finally:
        conn.close()


def cmd_migrate(args) -> int:
    from dooly.db import SCHEMA_VERSION
    if postgres.is_url(args.path):
        postgres.migrate(args.path)
        print(f"{postgres.redact(args.path)}: schema version {SCHEMA_VERSION}")
        return 0
    p = Path(args.path)
    if not p.is_file() or p.stat().st_size == 0:
        raise DoolyInputError(args.path, "no such database file" if not p.exists()
                              else "empty file, not a Dooly database")
    Store.open(args.path).close()  # a writing open upgrades the schema
    print(f"{args.path}: schema version {SCHEMA_VERSION}")
    return 0


def cmd_import_vidur(args) -> int:
    from dooly.interop.vidur_format import DEVICE_DIRS
    from dooly.interop.vidur_import import read_vidur_dir, store_vidur
    # every CSV is read and checked before the DB is opened: a bad one creates nothing
    parsed = read_vidur_dir(args.dir, args.tp, DEVICE_DIRS.get(args.device or ""))
    with Store.open(args.db) as store:
        counts = store_vidur(parsed, store)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0
