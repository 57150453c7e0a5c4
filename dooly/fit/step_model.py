"""The engine's step time beyond the model's units, calibrated on real engine steps.

A unit timed alone misses what the engine spends around it: the scheduler and output
processing, input preparation and attention metadata, the Python call of each piecewise
graph and attention layer, sampling bookkeeping. `dooly calibrate` runs a short mixed
workload on the real engine and stores each whole step (`LLMEngine.step`, what a
simulated step stands for) as a measurement of the pseudo-unit `engine.step`, its point
being the batch. The predictor fits the residual `step - sum(units)` at load time, so the
correction always matches the unit fits it corrects, and a re-sweep never leaves a stale
offset behind.

The residual is linear in per-step, per-decode-sequence, per-prefill-sequence,
decode-context and chunk-attention (query x context) terms. It has no per-token term on
purpose: per-token work is the units' GEMMs, measured point by point in the sweep, and a
per-token coefficient fitted on a few prefill steps only scales the prefill time by the
noise of the minute the calibration ran in. It is fitted with a Huber loss on relative
error (decode steps are milliseconds, long prefills seconds, and one step slowed by
another process must not pull the line)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from dooly.env import Environment, Measurement
from dooly.unit import Unit

FEATURES = ("step", "decodes_10", "prefills", "decode_context_10k", "prefill_attention_m")


def engine_step_unit(config_hash: str) -> Unit:
    """One per model: per-step costs grow with the model's layers (one piecewise graph
    and one attention call per layer), so they are not shared across models."""
    return Unit(op="engine.step", inputs=(), outputs=(),
                attrs=(("driver", "attention"), ("model", config_hash)))


def record_steps(store, env: Environment, steps: list[dict], config_hash: str) -> int:
    """steps: {"batch": [[q, c], ...], "ms": the whole engine step}. They replace the
    model's earlier calibration in this environment; repeated batches keep their median."""
    unit = engine_step_unit(config_hash)
    store.add_environment(env)
    store.add_unit(unit)
    by_batch: dict[str, tuple[list, list[float]]] = {}
    for s in steps:
        batch = [[int(q), int(c)] for q, c in s["batch"]]
        if batch and float(s["ms"]) > 0:
            by_batch.setdefault(str(batch), (batch, []))[1].append(float(s["ms"]))
    rows = [Measurement(unit.key, env.key, {"seqs": batch}, float(np.median(ms)), min(ms), max(ms),
                        float(np.mean(ms)), float(np.std(ms)), len(ms))
            for batch, ms in by_batch.values()]
    store.replace_measurements(unit.key, env.key, rows)
    return len(rows)


def features(seqs) -> list[float]:
    """Decodes and prefill chunks apart (per-sequence costs: sampling, metadata, output
    processing); the KV a step's decodes read; a chunk's attention over its context,
    which grows with query x context."""
    dec = [c for q, c in seqs if q == 1]
    pre = [(q, c) for q, c in seqs if q > 1]
    return [1.0, len(dec) / 10, len(pre), sum(dec) / 1e4, sum(q * c for q, c in pre) / 1e6]


class StepResidual:
    """residual(batch) = step - units, linear in FEATURES."""

    def fit(self, batches: list, steps_ms: list[float], units_ms: list[float]) -> "StepResidual":
        from sklearn.linear_model import HuberRegressor
        x = np.array([features(b) for b in batches])
        y = np.asarray(steps_ms) - np.asarray(units_ms)
        w = 1.0 / np.asarray(steps_ms)
        # a feature the calibration never varied (say no step held two prefills) gets no weight
        keep = np.ptp(x, axis=0) > 0
        keep[0] = True
        reg = HuberRegressor(fit_intercept=False, alpha=1e-4, max_iter=2000)
        reg.fit(x[:, keep], y, sample_weight=w / w.mean())
        self.coef_ = np.zeros(x.shape[1])
        self.coef_[keep] = reg.coef_
        rel = np.abs(x @ self.coef_ - y) / np.asarray(steps_ms)
        self.in_sample_mape_pct_ = float(100 * rel.mean())
        return self

    def predict_one(self, seqs) -> float:
        return float(np.dot(self.coef_, features(seqs)))


def fit_residual(store, env_key: str, config_hash: str,
                 units_ms: Callable[[list], float]) -> StepResidual | None:
    meas = store.measurements(unit_key=engine_step_unit(config_hash).key, env_key=env_key)
    if len(meas) < len(FEATURES) + 1:
        return None
    batches = [m.point["seqs"] for m in meas]
    return StepResidual().fit(batches, [m.median_ms for m in meas],
                              [units_ms(b) for b in batches])
