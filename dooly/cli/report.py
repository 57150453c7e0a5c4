"""Rich tables for `dooly analyze`."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dooly.symbolic.labels import Label


def _fmt(sig) -> str:
    return "[" + ",".join(str(d.value_or_expr) for d in sig.dims) + "]"


def dims_text(unit) -> tuple[str, str]:
    cfg, req = [], set()
    for t in unit.inputs:
        for d in t.dims:
            if d.label is Label.CONFIG:
                cfg.append(str(d.value_or_expr))
            else:
                req.add(str(d.value_or_expr))
    shape = " x ".join(_fmt(t) for t in unit.inputs[:3])
    return shape, ", ".join(sorted(req)) or "-"


def unit_state(plan: dict, key: str, hits: set) -> str:
    """A unit's state in the DB: measured, family (check error), check points, to sweep."""
    st = (plan.get("units") or {}).get(key)
    if st is None:
        return "hit" if key in hits else "miss"
    if st["status"] == "family-served":
        step = st.get("check_step_error_pct")
        return f"family ({st['check_error_pct']:.1f}%" + (f", {step:.2f}% of the step)" if step is not None else ")")
    if st["status"] == "unsupported":
        return f"unsupported here: {st['reason'][:60]}"
    if st["status"] == "unsweepable":
        return f"cannot sweep: {st['reason'][:60]}"
    return {"measured": "measured", "check": "check points", "sweep": "to sweep"}[st["status"]]


def unsweepable_lines(analysis) -> list[str]:
    """One line per unit the sweep cannot rebuild from its data, naming its models."""
    lines = []
    for key, why in analysis.unsweepable().items():
        holders = [inv for inv in analysis.inventories if key in inv.entries]
        op = holders[0].entries[key].unit.op
        lines.append(f"{op} ({key}) of {', '.join(i.model for i in holders)}: {why}")
    return lines


def print_unsweepable(analysis, console: Console) -> None:
    lines = unsweepable_lines(analysis)
    if lines:
        console.print(f"[bold]Cannot sweep[/bold] {len(lines)} unit(s): every point would fail, and "
                      f"`dooly predict` refuses the models that run them")
    for line in lines:
        console.print("  " + escape(line))


def print_failures(failed: list[dict]) -> None:
    """One stderr line per model Dooly skipped, as `main` prints an input error."""
    for f in failed:
        print(f"dooly: error: {f['error']}", file=sys.stderr)


def print_analysis(analysis, reuse: dict, plan: dict | None = None, quiet=False,
                   seconds: float | None = None, console: Console | None = None) -> None:
    console = console or Console()
    shared = analysis.shared_keys()
    hits = set(plan["measured_units"]) if plan else set()
    if not quiet:
        for inv in analysis.inventories:
            t = Table(title=f"{inv.model} ({inv.architecture}, engine={analysis.engine})",
                      title_justify="left")
            for col in ("op", "shapes (config dims as ints)", "request dims", "count", "shared"):
                t.add_column(col)
            if plan:
                t.add_column("in DB")  # measured, family (check error), check points or to sweep
            for key, e in sorted(inv.entries.items(), key=lambda kv: (kv[1].unit.op, kv[0])):
                shape, req = dims_text(e.unit)
                label = e.unit.op + (" (stateful)" if e.unit.stateful else "")
                if e.unit.op == "fused":
                    label = "fused:" + ",".join(sorted(w.split(":", 1)[-1] for w in e.where))[:40]
                row = [label, shape, req, str(e.count), "yes" if key in shared else "-"]
                if plan:
                    row.append(unit_state(plan, key, hits))
                t.add_row(*row)
            console.print(t)
    r = reuse
    console.print(f"[bold]Reuse[/bold] over {len(analysis.inventories)} model(s) on {r['hardware']}: "
                  f"{r['unique_units']} unique of {r['total_units']} units; profiling cost "
                  f"{r['independent_cost_s']:.1f} s independent vs {r['dedup_cost_s']:.1f} s with "
                  f"dedup: [bold]{r['reduction_pct']:.1f}%[/bold] less")
    print_unsweepable(analysis, console)
    if analysis.failed:
        console.print(f"[bold]Skipped[/bold] {len(analysis.failed)} model(s) the engine could not "
                      f"capture (errors on stderr): "
                      + escape(", ".join(f["config"] for f in analysis.failed)))
    if plan:
        console.print(f"[bold]Plan[/bold] against {plan['db']}: {len(plan['measured_units'])} units "
                      f"measured, {len(plan['missing_units'])} to measure, estimated "
                      f"{plan['remaining_cost_s']:.1f} s left")
        for key, reason in plan.get("unsupported_units", {}).items():
            op = next((inv.entries[key].unit.op for inv in analysis.inventories if key in inv.entries), key)
            console.print(f"  unsupported in {plan['env']}: {escape(op)} ({key[:8]}): {escape(reason)}")
        if "units" in plan:
            n = {s: sum(v["status"] == s for v in plan["units"].values())
                 for s in ("family-served", "check", "sweep")}
            console.print(f"  with `dooly sweep --families`: {n['family-served']} family-served, "
                          f"{n['check']} to check ({plan['check_points']} check points), {n['sweep']} to "
                          f"sweep; estimated {plan['remaining_cost_families_s']:.1f} s left, check points "
                          f"counted")
    if seconds is not None:
        console.print(f"analysed in {seconds:.1f} s")
