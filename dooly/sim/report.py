"""Simulation output: a rich table for the terminal, a JSON summary, per-request CSV,
and a PNG of the latency CDFs."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from dooly.sim.metrics import LATENCIES, RequestMetrics, Summary

CSV_COLUMNS = ("rid", "prompt_len", "output_len", "ttft_ms", "tpot_ms", "e2e_ms",
               "queue_ms", "mean_itl_ms", "max_itl_ms", "num_preemptions")


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def summary_table(summary: Summary, title: str = "Simulated serving"):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for col in ("p50", "p90", "p99", "mean", "max"):
        table.add_column(col, justify="right")
    for name in LATENCIES:
        vals = summary.latency[name]
        table.add_row(name, *(_fmt(vals[c]) for c in ("p50", "p90", "p99", "mean", "max")))
    for name, vals in (("batch seqs", summary.batch_seqs), ("batch tokens", summary.batch_tokens)):
        table.add_row(name, *(_fmt(vals[c]) for c in ("p50", "p90", "p99", "mean", "max")))
    table.caption = (f"{summary.num_requests} requests in {summary.duration_s:,.2f} s: "
                     f"{summary.requests_per_s:,.2f} req/s, "
                     f"{summary.output_tokens_per_s:,.1f} output tok/s, "
                     f"{summary.num_steps} steps, {summary.num_preemptions} preemptions")
    return table


def print_summary(summary: Summary, console=None, title: str = "Simulated serving") -> None:
    from rich.console import Console

    (console or Console()).print(summary_table(summary, title))


def _clean(obj):
    # JSON has no NaN; null says "undefined" (e.g. TPOT with only 1-token outputs).
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    return obj


def write_json(summary: Summary, path: str | Path, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**summary.to_dict(), **(extra or {})}
    path.write_text(json.dumps(_clean(data), indent=2) + "\n")
    return path


def write_csv(per_request: list[RequestMetrics], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for m in per_request:
            itl = m.itl_ms
            w.writerow([m.rid, m.prompt_len, m.output_len, f"{m.ttft_ms:.4f}",
                        "" if math.isnan(m.tpot_ms) else f"{m.tpot_ms:.4f}",
                        f"{m.e2e_ms:.4f}", f"{m.queue_ms:.4f}",
                        f"{sum(itl) / len(itl):.4f}" if itl else "",
                        f"{max(itl):.4f}" if itl else "", m.num_preemptions])
    return path


def plot_cdfs(per_request: list[RequestMetrics], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, name in zip(axes, ("ttft_ms", "tpot_ms", "e2e_ms")):
        vals = np.sort(np.array([getattr(m, name) for m in per_request], dtype=float))
        vals = vals[np.isfinite(vals)]
        if vals.size:
            ax.plot(vals, np.arange(1, vals.size + 1) / vals.size)
        ax.set_xlabel(name.replace("_ms", " (ms)").upper().replace("(MS)", "(ms)"))
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
