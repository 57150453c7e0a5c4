"""What `dooly search` shows and writes: one flat row per candidate (JSON), the ranked
table, the Pareto chart (goodput per device against p90 TTFT and TPOT), latency-against-
rate curves and the probes as CSV. Takes a `dooly.search.SearchResult` (duck-typed: this
room does not import dooly.search)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

NAN = math.nan
CURVES_SHOWN = 10   # candidates drawn in the latency-against-rate chart


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def rows(result) -> list[dict]:
    """One flat object per candidate, in rank order."""
    out = []
    for i, r in enumerate(result.ranked, 1):
        c, g, unc = r.candidate, r.goodput, r.uncertainty
        at = g.at_goodput
        stats = dict(at.stats or {}) if at else {}
        lo, hi = r.band or (None, None)
        row = {"rank": i, "candidate": c.label, "model": c.model, "config": c.config, "env": c.env,
               **dict(c.settings), "devices": c.devices, "goodput_rps": g.rate,
               "goodput_rps_per_device": r.per_device, "goodput_band_lo": lo, "goodput_band_hi": hi,
               "draws": len(r.draws), "status": g.status, "binding_slo": g.binding,
               "fail_rate_rps": g.fail_rate, "probes": len(g.probes),
               "output_tokens_per_s": g.rate * result.output_per_request,
               "output_tokens_per_s_per_device": g.rate * result.output_per_request / c.devices,
               **stats,
               **{f"slo_{k}_ms": v for k, v in (at.values if at else {}).items()},
               "unit_error_pct": unc.mean_unit_pct, "step_error_pct": unc.step_pct,
               "step_error_source": unc.step_source,
               **unc.kind_fields(), "winner": i == 1,
               "within_error": result.within_error if i == 1 else None,
               "runner_up_wins_share": result.runner_up_wins if i == 1 else None}
        out.append({k: _num(v) for k, v in row.items()})
    return out


def write_json(table: list[dict], meta: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "candidates": table}, indent=2) + "\n")
    return path


def _f(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def ranking_table(table: list[dict], title: str, shown: int = 30):
    from rich.table import Table
    t = Table(title=title)
    for col in ("#", "candidate", "goodput req/s", "90% band", "per device", "binds",
                "out tok/s", "TTFT p90 ms", "TPOT p90 ms"):
        t.add_column(col, justify="left" if col in ("candidate", "binds") else "right")
    for row in table[:shown]:
        above = row["status"] == "above_range"
        band = (f"{_f(row['goodput_band_lo'])}-{_f(row['goodput_band_hi'])}"
                if row["goodput_band_lo"] is not None else "")
        t.add_row(str(row["rank"]), row["candidate"], (">=" if above else "") + _f(row["goodput_rps"], 3),
                  band, _f(row["goodput_rps_per_device"], 3),
                  "rate range" if above else (row["binding_slo"] or "-"),
                  _f(row.get("output_tokens_per_s"), 1), _f(row.get("ttft_p90_ms"), 1),
                  _f(row.get("tpot_p90_ms"), 1))
    if len(table) > shown:
        t.caption = f"{len(table) - shown} more in the JSON"
    return t


def verdict_line(table: list[dict], slos) -> str:
    """Who wins, whether within error, and which SLO binds."""
    win = table[0]
    limits = {s.name: s.limit_ms for s in slos}
    if win["goodput_rps"] == 0:
        return (f"no candidate meets the SLOs at the lowest rate probed; {win['binding_slo']} "
                f"binds first ({win['candidate']})")
    text = f"winner: {win['candidate']}, {win['goodput_rps']:.3g} req/s"
    if win["status"] == "above_range":
        text += " or more (the top of --rate-range meets every SLO: raise it)"
    elif win["binding_slo"]:
        text += f"; {win['binding_slo']} binds (limit {limits[win['binding_slo']]:g} ms)"
    if len(table) > 1 and win["within_error"] is not None:
        second = table[1]
        share = win["runner_up_wins_share"]
        text += (f"; WITHIN ERROR of {second['candidate']} (90% bands overlap; with each draw's "
                 f"errors shared by both, the runner-up is ahead in {share:.0%} of draws)"
                 if win["within_error"]
                 else f"; clear of {second['candidate']} (90% bands apart)")
    elif len(table) > 1:
        text += "; no error bands (--intervals 0)"
    return text


def write_probes_csv(result, slos, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["candidate", "rate_rps", "ok", "cut", "missed"] + [f"{s.name}_ms" for s in slos])
        for r in result.ranked:
            for p in sorted(r.goodput.probes, key=lambda p: p.rate):
                w.writerow([r.candidate.label, f"{p.rate:.6g}", int(p.ok), int(p.cut), p.missed or ""]
                           + [f"{p.values.get(s.name, NAN):.4f}" for s in slos])
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def plot_pareto(table: list[dict], path) -> Path:
    """Goodput per device against p90 TTFT and p90 TPOT at goodput; the Pareto front (more
    goodput for less latency) joined, the winner starred, bands as error bars."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    pts = [r for r in table if r["goodput_rps"] and r.get("ttft_p90_ms") is not None]
    for ax, metric in zip(axes, ("ttft_p90_ms", "tpot_p90_ms")):
        xs = [r[metric] for r in pts]
        ys = [r["goodput_rps_per_device"] for r in pts]
        ax.scatter(xs, ys, s=18, alpha=0.6, label="candidate")
        front, best = [], -1.0
        for x, y in sorted(zip(xs, ys), key=lambda p: (p[0], -p[1])):
            if x is not None and y > best:
                front.append((x, y))
                best = y
        if front:
            ax.plot(*zip(*front), "-", color="C1", label="Pareto front")
        for r in pts:
            if r["goodput_band_lo"] is not None:
                d = r["devices"]
                ax.errorbar(r[metric], r["goodput_rps_per_device"], fmt="none", ecolor="C2",
                            yerr=[[r["goodput_rps_per_device"] - r["goodput_band_lo"] / d],
                                  [r["goodput_band_hi"] / d - r["goodput_rps_per_device"]]])
        if pts and pts[0]["rank"] == 1:
            ax.scatter([pts[0][metric]], [pts[0]["goodput_rps_per_device"]], marker="*", s=220,
                       color="C3", label=f"winner: {pts[0]['candidate']}")
        ax.set_xlabel(f"{metric[:4].upper()} p90 at goodput (ms)")
        ax.set_ylabel("goodput per device (req/s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_curves(result, slos, path) -> Path:
    """Each SLO's statistic against the request rate probed, per leading candidate; a cut
    probe (hollow) is a lower bound; the limit dashed."""
    from matplotlib import ticker
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(slos), figsize=(5.5 * len(slos), 4.2), squeeze=False)
    for ax, slo in zip(axes[0], slos):
        for i, r in enumerate(result.ranked[:CURVES_SHOWN]):
            probes = sorted(r.goodput.probes, key=lambda p: p.rate)
            full = [(p.rate, p.values.get(slo.name, NAN)) for p in probes if not p.cut]
            cut = [(p.rate, p.values.get(slo.name, NAN)) for p in probes if p.cut]
            if full:
                ax.plot(*zip(*full), "o-", ms=3, color=f"C{i}", label=r.candidate.label)
            if cut:
                ax.plot(*zip(*cut), "o", ms=5, mfc="none", color=f"C{i}")
        ax.axhline(slo.limit_ms, ls="--", color="k", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(f"{slo.name} (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"latency against rate, top {min(CURVES_SHOWN, len(result.ranked))} "
                 "(hollow: run cut once the SLO was sure to be missed, a lower bound)", fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
