"""`dooly db ...`: look into, export and merge measurement databases."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from dooly.db import Store


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

    p = sub.add_parser("export", help="write every table as plain JSON")
    p.add_argument("--db", required=True, help="database file")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("merge", help="copy other databases' rows into --db")
    p.add_argument("--db", required=True, help="database file to merge into (created if missing)")
    p.add_argument("others", nargs="+", metavar="OTHER", help="database files to read")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("import-vidur", help="read Vidur's profiling CSVs (mlp.csv) as Dooly units")
    p.add_argument("dir", help="a directory holding <model>/mlp.csv files (searched recursively)")
    p.add_argument("--db", required=True)
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel rows to import")
    p.set_defaults(func=cmd_import_vidur)


def cmd_stats(args) -> int:
    with Store.open(args.db, create=False) as store:
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
    with Store.open(args.db, create=False) as store:
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
    with Store.open(args.db, create=False) as store:
        store.export_json(args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_merge(args) -> int:
    total = 0
    with Store.open(args.db) as store:
        for other in args.others:
            added = store.merge_from(other)
            total += added
            print(f"{other}: {added} rows added")
    if len(args.others) > 1:
        print(f"total: {total} rows added to {args.db}")
    return 0


def cmd_import_vidur(args) -> int:
    from dooly.interop.vidur_import import import_vidur
    with Store.open(args.db) as store:
        counts = import_vidur(args.dir, store, tp=args.tp)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 0
