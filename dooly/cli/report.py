"""Rich tables for `dooly analyze`."""
from __future__ import annotations

from rich.console import Console
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
                t.add_column("in DB")
            for key, e in sorted(inv.entries.items(), key=lambda kv: (kv[1].unit.op, kv[0])):
                shape, req = dims_text(e.unit)
                label = e.unit.op + (" (stateful)" if e.unit.stateful else "")
                if e.unit.op == "fused":
                    label = "fused:" + ",".join(sorted(w.split(":", 1)[-1] for w in e.where))[:40]
                row = [label, shape, req, str(e.count), "yes" if key in shared else "-"]
                if plan:
                    row.append("hit" if key in hits else "miss")
                t.add_row(*row)
            console.print(t)
    r = reuse
    console.print(f"[bold]Reuse[/bold] over {len(analysis.inventories)} model(s) on {r['hardware']}: "
                  f"{r['unique_units']} unique of {r['total_units']} units; profiling cost "
                  f"{r['independent_cost_s']:.1f} s independent vs {r['dedup_cost_s']:.1f} s with "
                  f"dedup: [bold]{r['reduction_pct']:.1f}%[/bold] less")
    if plan:
        console.print(f"[bold]Plan[/bold] against {plan['db']}: {len(plan['measured_units'])} units "
                      f"measured, {len(plan['missing_units'])} to measure, estimated "
                      f"{plan['remaining_cost_s']:.1f} s left")
    if seconds is not None:
        console.print(f"analysed in {seconds:.1f} s")
