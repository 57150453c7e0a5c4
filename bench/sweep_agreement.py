"""Do two sweeps of the same units agree? The same points measured into two DBs (at two
times, after a reboot, by two hosts of one kind) compared point by point: the spread of
their ratio is what a sweep's figure can be trusted to within on this host.

    python bench/sweep_agreement.py A.db B.db [C.db ...] [--env KEY] [--by-op] [--json PATH]

Every pair of DBs is compared on the points both measured (same unit, environment and
point). Per pair: the number of common points, the median and p90 of |B/A - 1|, the
share of points within 5% and 10%, the median signed ratio (a drift of one sweep against
the other) and the ratio of the summed times (what a step built from these points would
shift by). Where both sweeps read the host's speed (dooly.hostspeed, schema 5), the pair
also prints the host factor (B's median reference time over A's) and the spread after
dividing B by it (`host_factor`, `adjusted_spread_median_pct`, `adjusted_bias_pct`): what
is left once the host state each sweep ran in is taken out. --json: flat keys of the
worst pair (`spread_median_pct`, `spread_p90_pct`, `within_5_pct`, `within_10_pct`,
`bias_pct`, `total_ratio_pct`) and `<a>~<b>.*` per pair.
"""
from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flatjson  # noqa: E402
from dooly.cli import OneLineParser  # noqa: E402


def points(db: str, env: str | None) -> tuple[dict, dict]:
    """{(unit, env, point): median ms} of the DB's ok rows, and {unit: op}."""
    from dooly.db import Store
    with Store.open(db, create=False) as store:
        rows = store.measurements(env_key=env)
        ops = {u.key: u.op for u in store.units()}
    return {(m.unit_key, m.env_key, json.dumps(m.point, sort_keys=True)): m.median_ms
            for m in rows if m.median_ms > 0}, ops


def host_readings(db: str, env: str | None) -> list:
    """The host-speed readings the DB's sweeps took (empty before schema 5)."""
    from dooly.db import Store
    from dooly.hostspeed import stored_readings
    with Store.open(db, create=False) as store:
        if not hasattr(store, "host_probes"):
            return []
        return stored_readings(store, env)


def adjusted(a: dict, b: dict, factor: float) -> dict:
    """The spread of B/(A x factor): B with the host's slowdown against A taken out."""
    common = [k for k in a if k in b]
    ratios = [b[k] / (a[k] * factor) for k in common]
    return {"host_factor": factor,
            "adjusted_spread_median_pct": statistics.median(100.0 * abs(r - 1) for r in ratios),
            "adjusted_bias_pct": 100.0 * (statistics.median(ratios) - 1)}


def _q(values: list[float], f: float) -> float:
    s = sorted(values)
    return s[min(int(round(f * (len(s) - 1))), len(s) - 1)]


def compare(a: dict, b: dict) -> dict | None:
    """The figures of B against A on their common points (None: nothing in common)."""
    common = [k for k in a if k in b]
    if not common:
        return None
    ratios = [b[k] / a[k] for k in common]
    dev = [100.0 * abs(r - 1) for r in ratios]
    return {"points": len(common),
            "spread_median_pct": statistics.median(dev), "spread_p90_pct": _q(dev, 0.9),
            "within_5_pct": 100.0 * sum(d <= 5 for d in dev) / len(dev),
            "within_10_pct": 100.0 * sum(d <= 10 for d in dev) / len(dev),
            "bias_pct": 100.0 * (statistics.median(ratios) - 1),
            "total_ratio_pct": 100.0 * (sum(b[k] for k in common) / sum(a[k] for k in common) - 1)}


def by_op(a: dict, b: dict, ops: dict) -> dict[str, tuple[int, float]]:
    """op -> (points, median B/A)."""
    groups: dict[str, list[float]] = {}
    for k in a:
        if k in b:
            groups.setdefault(ops.get(k[0], "?").split(".")[-1][:32], []).append(b[k] / a[k])
    return {op: (len(v), statistics.median(v)) for op, v in sorted(groups.items())}


def main(argv=None) -> int:
    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("dbs", nargs="+", help="two or more DBs holding sweeps of the same units")
    ap.add_argument("--env", help="compare only this environment's rows")
    ap.add_argument("--by-op", action="store_true", help="also the median ratio per op")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    if len(args.dbs) < 2:
        ap.error("give at least two DBs")
    from dooly.errors import DoolyInputError
    try:
        loaded = {db: points(db, args.env) for db in args.dbs}
        hosts = {db: host_readings(db, args.env) for db in args.dbs}
    except DoolyInputError as err:
        print(f"dooly: error: {err}", file=sys.stderr)
        return 2
    result: dict = {"dbs": args.dbs}
    worst = None
    for da, db in itertools.combinations(args.dbs, 2):
        fig = compare(loaded[da][0], loaded[db][0])
        name = f"{Path(da).stem}~{Path(db).stem}"
        if fig is None:
            print(f"{name}: no point in common")
            continue
        print(f"{name}: {fig['points']} common points; |B/A - 1| median {fig['spread_median_pct']:.1f}%, "
              f"p90 {fig['spread_p90_pct']:.1f}%; within 5% {fig['within_5_pct']:.0f}%, within 10% "
              f"{fig['within_10_pct']:.0f}%; median B/A {1 + fig['bias_pct'] / 100:.3f}; summed time "
              f"{fig['total_ratio_pct']:+.1f}%")
        if hosts[da] and hosts[db]:
            from dooly.hostspeed import host_factor
            fig.update(adjusted(loaded[da][0], loaded[db][0], host_factor(hosts[db], hosts[da])))
            print(f"    host: B's reference workload {fig['host_factor']:.3f} x A's "
                  f"({len(hosts[da])} and {len(hosts[db])} readings); B / host factor: median "
                  f"|B/A - 1| {fig['adjusted_spread_median_pct']:.1f}%, median B/A "
                  f"{1 + fig['adjusted_bias_pct'] / 100:.3f}")
        if args.by_op:
            for op, (n, r) in by_op(loaded[da][0], loaded[db][0], loaded[db][1]).items():
                print(f"    {op:32s} n={n:4d} median B/A {r:.3f}")
        result.update({f"{name}.{k}": v for k, v in fig.items()})
        if worst is None or fig["spread_median_pct"] > worst["spread_median_pct"]:
            worst = fig
    if worst is None:
        print("dooly: error: the DBs share no measured point", file=sys.stderr)
        return 2
    result.update(worst)
    flatjson.write(args.json_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
