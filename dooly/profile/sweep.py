"""`sweep`: measure only what the DB lacks for this environment. Every measurement is
committed as it is taken, so an interrupted sweep resumes where it stopped; a point
that fails is stored as failed with its reason and the sweep goes on."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from dooly.analyze import analyze
from dooly.engines import attention_runner, environment
from dooly.env import Environment, Measurement
from dooly.profile.grid import GridLimits, points_for
from dooly.profile.timing import timer_for
from dooly.unit import Unit


@dataclass
class SweepSummary:
    env_key: str
    units_measured: list[str] = field(default_factory=list)
    units_reused: list[str] = field(default_factory=list)
    units_failed: list[str] = field(default_factory=list)
    points_measured: int = 0
    points_failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    unit_seconds: dict[str, float] = field(default_factory=dict)
    points_rechecked_faster: int = 0
    recheck_seconds: float = 0.0

    def to_json(self) -> dict:
        return {"env_key": self.env_key, "units_measured": len(self.units_measured),
                "units_reused": len(self.units_reused), "units_failed": len(self.units_failed),
                "points_measured": self.points_measured, "points_failed": self.points_failed,
                "points_rechecked_faster": self.points_rechecked_faster,
                "seconds": round(self.seconds, 2), "recheck_seconds": round(self.recheck_seconds, 2),
                "interrupted": self.interrupted}


def grid_for(unit: Unit, lim: GridLimits) -> list[dict]:
    pts = points_for(unit.driver, lim, unit.request_symbols())
    if unit.op == "scaled_dot_product_attention":
        # the transformers capture is a prefill without a cache
        pts = [p for p in pts if all(c == 0 for _, c in p["seqs"])]
    return pts


class Runners:
    """One runner per unit; attention runners are shared by units with equal attributes."""

    def __init__(self, env: Environment, lim: GridLimits):
        self.env, self.lim = env, lim
        self._runners: dict = {}  # unit key, or attention attributes -> runner

    def prepare(self, unit: Unit, point: dict):
        if unit.stateful:
            return self._stateful(unit, point)
        from dooly.profile.runners import StatelessRunner
        runner = self._runners.get(unit.key)
        if runner is None:
            runner = self._runners[unit.key] = StatelessRunner(unit, self.env.engine,
                                                            self.env.device_kind, self.env.execution,
                                                            cold=self.env.cache != "warm")
        return runner.prepare(point)

    def _stateful(self, unit: Unit, point: dict):
        a = unit.attr
        # the KV-cache write is token-driven: one sequence of T new tokens
        seqs = [tuple(s) for s in point["seqs"]] if "seqs" in point else [(point["T"], 0)]
        if unit.op == "scaled_dot_product_attention":
            from dooly.profile.runners import random_tensor
            from dooly.profile.grid import point_values
            q, k, v = (random_tensor(s, point_values(point), self.env.device_kind) for s in unit.inputs[:3])
            gqa = bool(a.get("enable_gqa", False))
            return lambda: torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=gqa)
        key = (a.get("num_heads"), a.get("num_kv_heads"), a.get("head_size"), a.get("sliding_window", 0))
        runner = self._runners.get(key)
        if runner is None:
            runner = self._runners[key] = attention_runner(
                self.env.engine, num_heads=key[0], num_kv_heads=key[1], head_size=key[2],
                sliding_window=key[3] or 0, dtype=self.env.dtype,
                block_size=self.env.block_size, max_context=self.lim.max_context + self.lim.max_tokens,
                max_batch=max(self.lim.max_batch, 4), cold_kv=self.env.cache == "cold")
        parts = runner.prepare_parts(seqs)
        return parts["kv_update" if "kv_cache" in unit.op else "attention"]


def sweep(config_paths: list[str], db_path: str, engine: str | None = None, device: str = "cpu",
          backend: str | None = None, lim: GridLimits = GridLimits(), threads: int | None = None,
          progress=None, analysis=None, recheck: bool | None = None) -> SweepSummary:
    """Measure every unit of the given models that the DB lacks for this environment.
    `progress(unit, done, total)` is called after each point. `recheck` (default: on a
    CPU, which shares its cores with whatever else runs) times every new point again
    after the first pass and keeps the faster median."""
    recheck = device == "cpu" if recheck is None else recheck
    from dooly.db import Store
    analysis = analysis or analyze(config_paths, engine)
    env = environment(analysis.engine, device, backend, threads=threads)
    torch.set_num_threads(env.threads)
    summary = SweepSummary(env.key)
    t0 = time.perf_counter()
    timer = timer_for(device)
    runners = Runners(env, lim)
    with Store.open(db_path) as store:
        store.add_environment(env)
        units: dict[str, Unit] = {}
        for inv in analysis.inventories:
            for key, e in inv.entries.items():
                store.add_unit(e.unit)
                units.setdefault(key, e.unit)
            store.set_inventory(inv.config_hash, inv.engine, inv.model, inv.counts())
        try:
            for key, unit in units.items():
                todo = [p for p in grid_for(unit, lim) if not store.has_point(key, env.key, p)]
                if not todo:
                    summary.units_reused.append(key)
                    continue
                summary.units_measured.append(key)
                t_unit = time.perf_counter()
                for i, point in enumerate(todo):
                    m = _measure(runners, timer, unit, point, env)
                    store.add_measurement(m)
                    summary.points_failed += m.status == "failed"
                    summary.points_measured += m.status == "ok"
                    if progress:
                        progress(unit, i + 1, len(todo))
                summary.unit_seconds[key] = time.perf_counter() - t_unit
                if not store.units_measured(env.key) >= {key}:
                    summary.units_failed.append(key)
            if recheck:
                _recheck(store, runners, timer, [units[k] for k in summary.units_measured], env, summary)
        except KeyboardInterrupt:
            summary.interrupted = True
    summary.seconds = time.perf_counter() - t0
    return summary


def _recheck(store, runners: Runners, timer, units: list[Unit], env: Environment, summary) -> None:
    """A second pass over every point just measured, minutes after the first: another
    process on a shared host only ever slows a point down, and it does so in bursts that
    can cover a run of neighbouring points, so each point keeps the faster of its two
    medians. Interrupting this pass loses nothing: the first pass's rows stand."""
    t0 = time.perf_counter()
    for unit in units:
        for m in store.measurements(unit_key=unit.key, env_key=env.key):
            again = _measure(runners, timer, unit, m.point, env)
            if again.status == "ok" and again.median_ms < m.median_ms:
                store.add_measurement(again)
                summary.points_rechecked_faster += 1
    summary.recheck_seconds = time.perf_counter() - t0


def _measure(runners: Runners, timer, unit: Unit, point: dict, env: Environment) -> Measurement:
    try:
        fn = runners.prepare(unit, point)
        st = timer(fn)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # OOM, unsupported shape, kernel error: record and go on
        return Measurement(unit.key, env.key, point, status="failed",
                           reason=f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")
    return Measurement(unit.key, env.key, point, st.median_ms, st.p10_ms, st.p90_ms, st.mean_ms,
                       st.std_ms, st.samples, st.outliers)
