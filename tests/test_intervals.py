"""Error bands (`dooly simulate --intervals`, `dooly search`): step times drawn within the
predictor's stated errors, one factor per unit and per step model for a whole run; bands
widen with the stated errors; the errors come from the DB's fits and calibrated steps."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from conftest import config
from dooly.cli import main
from dooly.sim.intervals import (UNKNOWN_ERROR_PCT, DrawnStep, Uncertainty, band, draw_factors,
                                 run_draws, step_kind, summary_bands)
from dooly.sim.metrics import summarize
from dooly.sim.scheduler import SchedulerConfig
from dooly.sim.simulator import simulate
from dooly.sim.workload import LengthDist, WorkloadSpec, build_workload

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")


@dataclass
class Part:
    breakdown: dict = field(default_factory=dict)
    engine_ms: float = 0.0


def fake_predict(pairs):
    """Two units and an engine rest, like a Predictor's answer."""
    tokens, ctx = sum(q for q, _ in pairs), sum(c for _, c in pairs)
    return Part({"gemm": 2.0 + 0.02 * tokens, "attn": 1.0 + 0.5 * ctx / 1000}, 3.0)


def nominal(batch):
    r = fake_predict([(s[0], s[1]) for s in batch])
    return sum(r.breakdown.values()) + r.engine_ms


def workload(rate=20.0, n=80):
    return build_workload(WorkloadSpec(rate=rate, num_requests=n, seed=1,
                                       prompt=LengthDist("lognormal", 256, 0.6),
                                       output=LengthDist("lognormal", 48, 0.6)))


def test_one_draw_scales_a_unit_alike_in_every_step():
    drawn = DrawnStep(fake_predict, {"gemm": 1.3}, 1.1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        batch = [(int(q), int(c), True) for q, c in rng.integers(1, 600, size=(rng.integers(1, 9), 2))]
        gemm = fake_predict([(q, c) for q, c, _ in batch]).breakdown["gemm"]
        assert drawn(batch) == pytest.approx((nominal(batch) + 0.3 * gemm) * 1.1)


def test_draws_are_fixed_per_draw_shared_by_candidates_and_apart_between_environments():
    a = Uncertainty((("u1", 10.0), ("u2", 10.0)), 8.0, scope="env1")
    b = Uncertainty((("u1", 10.0),), 8.0, scope="env1")         # another model, same environment
    other = Uncertainty((("u1", 10.0),), 8.0, scope="env2")
    assert draw_factors(a, 3) == draw_factors(a, 3)
    assert draw_factors(a, 3)[0]["u1"] == draw_factors(b, 3)[0]["u1"]     # a shared unit errs alike
    assert draw_factors(a, 3)[1] == draw_factors(b, 3)[1]
    assert draw_factors(a, 3)[0]["u1"] != draw_factors(other, 3)[0]["u1"]
    assert draw_factors(a, 3)[0]["u1"] != draw_factors(a, 4)[0]["u1"]
    assert draw_factors(a, 3)[0]["u1"] != draw_factors(a, 3)[0]["u2"]


def test_drawn_factors_spread_as_the_stated_error():
    unc = Uncertainty((("u", 10.0),))
    f = np.array([draw_factors(unc, i)[0]["u"] for i in range(4000)])
    assert np.mean(np.abs(f - 1)) * 100 == pytest.approx(10.0, rel=0.05)   # the MAPE is the MAE
    assert draw_factors(Uncertainty((("u", 0.0),), 0.0), 1) == ({"u": 1.0}, 1.0)


def _p90_ttft_band(unc, draws=16):
    runs = run_draws(workload(), fake_predict, unc, SchedulerConfig(max_num_seqs=16), draws)
    lo, hi = band([s.latency["ttft_ms"]["p90"] for s in runs])
    return hi - lo


def test_bands_widen_with_larger_stored_errors():
    small = _p90_ttft_band(Uncertainty((("gemm", 2.0), ("attn", 2.0)), 1.0))
    large = _p90_ttft_band(Uncertainty((("gemm", 20.0), ("attn", 20.0)), 10.0))
    assert 0 < small < large / 3


def test_no_stated_error_gives_the_nominal_run_as_its_band():
    reqs, sched = workload(), SchedulerConfig(max_num_seqs=16)
    base = summarize(simulate(reqs, nominal, sched))
    bands = summary_bands(run_draws(reqs, fake_predict, Uncertainty(), sched, 3))
    assert bands["ttft_ms"]["p90"]["lo"] == pytest.approx(base.latency["ttft_ms"]["p90"])
    assert bands["ttft_ms"]["p90"]["hi"] == pytest.approx(base.latency["ttft_ms"]["p90"])


def test_an_error_drawn_per_run_spreads_more_than_the_same_error_per_step():
    """Errors are systematic: a unit 10% slow is slow in every step, so the run's latency
    moves with it; the same error drawn afresh each step would average away."""
    reqs, sched = workload(), SchedulerConfig(max_num_seqs=16)
    per_run = _p90_ttft_band(Uncertainty((("gemm", 10.0), ("attn", 10.0)), 10.0), draws=12)
    spread = []
    for i in range(12):
        rng = np.random.default_rng(i)
        noisy = lambda b: nominal(b) * max(1 + rng.normal(0, 0.125), 0.2)  # noqa: E731
        spread.append(summarize(simulate(reqs, noisy, sched)).latency["ttft_ms"]["p90"])
    lo, hi = band(spread)
    assert per_run > 2 * (hi - lo)


def test_uncertainty_refuses_a_negative_or_infinite_error():
    for pct in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="unit_pct"):
            Uncertainty((("u", pct),))
    with pytest.raises(ValueError, match="kind_pct"):
        Uncertainty(kind_pct=(("verify", 5.0),))


def test_a_step_is_drawn_with_the_error_of_its_kind():
    """Decode steps transfer worse than prefill ones: stated per kind, each kind of step
    gets its own factor, the same in every step of that kind."""
    assert [step_kind(b) for b in ([(1, 9), (1, 40)], [(64, 0), (30, 64)], [(64, 0), (1, 9)])] == \
        ["decode", "prefill", "mixed"]
    unc = Uncertainty((), 5.0, kind_pct=(("prefill", 0.0), ("decode", 30.0)))
    units, step = draw_factors(unc, 2)
    # no error stated for mixed steps (none calibrated): they take the whole step's
    assert step["prefill"] == 1.0 and step["decode"] != 1.0
    assert step["mixed"] == draw_factors(Uncertainty((), 5.0), 2)[1] != 1.0
    drawn = DrawnStep(fake_predict, units, step)
    for batch in ([(64, 0, True)], [(1, 100, False), (1, 7, False)], [(64, 0, True), (1, 7, False)]):
        assert drawn(batch) == pytest.approx(nominal(batch) * step[step_kind(batch)])


def test_ttft_at_low_load_takes_its_band_from_prefill_steps():
    """A prefill error widens a lone request's TTFT band; a decode error hardly touches it
    (only where a request arrives during another's decode step)."""
    reqs, sched = workload(rate=0.02, n=30), SchedulerConfig(max_num_seqs=16)

    def p90_width(kinds):
        runs = run_draws(reqs, fake_predict, Uncertainty((), 10.0, kind_pct=kinds), sched, 12)
        lo, hi = band([s.latency["ttft_ms"]["p90"] for s in runs])
        return hi - lo
    assert p90_width((("prefill", 0.0), ("decode", 20.0), ("mixed", 0.0))) < \
        0.05 * p90_width((("prefill", 20.0), ("decode", 0.0), ("mixed", 0.0)))


# -- errors read from a DB ----------------------------------------------------------------------
def _pool_db(tmp_path):
    """Three calibrated models and SmolLM2, one GEMM unit each (as test_step_model builds it)."""
    from test_step_model import ENV, HELD_OUT, POOL, _batches, _engine_ms, _sig
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.env import Measurement
    from dooly.fit.step_pool import record_steps
    from dooly.fit.stored import fit_environment
    from dooly.unit import Unit
    me = load_config(SMOL).hash
    db = str(tmp_path / "p.db")
    structures = dict(POOL, **{me: HELD_OUT})
    with Store.open(db) as s:
        s.add_environment(ENV)
        for i, h in enumerate(structures):
            u = Unit("linear", (_sig("T", 64 * (i + 1)), _sig(128, 64 * (i + 1))), (_sig("T", 128),))
            s.add_unit(u)
            s.set_inventory(h, "vllm", h, {u.key: 30})
            for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048):
                ms = 0.01 * t * (1 + 0.03 * np.sin(t))
                s.add_measurement(Measurement(u.key, ENV.key, {"T": t}, ms, ms, ms, ms, 0.0, 5))
            steps = [{"batch": b, "ms": 0.3 * sum(q for q, _ in b) + _engine_ms(structures[h], b)}
                     for b in _batches(30, seed=i)]
            record_steps(s, ENV, steps, structures[h], h)
        fit_environment(s, ENV.key)   # stored once: every load reads them
    return db, me


def test_step_error_is_own_steps_when_calibrated_and_model_out_when_not(tmp_path):
    from dooly.config import load_config
    from dooly.db import Store
    from dooly.predict import Predictor
    from dooly.uncertainty import predictor_uncertainty, unit_error_pct
    db, me = _pool_db(tmp_path)
    own = Predictor.load(SMOL, db, "vllm")
    out = Predictor.load(SMOL, db, "vllm", exclude=[me])
    with Store.open(db, create=False) as store:
        u_own = predictor_uncertainty(own, store, load_config(SMOL).hash)
        u_out = predictor_uncertainty(out, store, load_config(SMOL).hash)
    assert u_own.step_source == "its own 30 calibrated steps"
    assert u_out.step_source == "model-out over 3 calibrated models"
    # the pool's steps hold every kind; the whole's error lies among the kinds'
    for u in (u_own, u_out):
        kinds = dict(u.kind_pct)
        assert set(kinds) == {"prefill", "decode", "mixed"}
        assert min(kinds.values()) <= u.step_pct <= max(kinds.values())
    assert u_own.scope == own.env.key and len(u_own.unit_pct) == 1
    assert 0 < u_own.unit_pct[0][1] < 10
    assert unit_error_pct(type("M", (), {"cv_mape_pct": None})()) == UNKNOWN_ERROR_PCT


def test_simulate_intervals_reports_bands_in_the_json(tmp_path, capsys):
    db, _ = _pool_db(tmp_path)
    out = tmp_path / "s.json"
    rc = main(["simulate", SMOL, "--db", db, "--rate", "2", "--num-requests", "30",
               "--intervals", "5", "--json", str(out)])
    assert rc == 0
    assert "90% bands over 5 drawn runs" in capsys.readouterr().out
    iv = json.loads(out.read_text())["intervals"]
    assert iv["draws"] == 5 and iv["step_error_source"] == "its own 30 calibrated steps"
    assert iv["ttft_ms"]["p90"]["lo"] <= iv["ttft_ms"]["p90"]["hi"]


def test_simulate_intervals_with_a_stand_in_has_zero_width_bands(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["simulate", SMOL, "--step-model", "linear:1,0.01,0.1", "--rate", "1",
                 "--num-requests", "10", "--intervals", "3", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["intervals"]["e2e_ms"]["p50"] == {"lo": data["e2e_ms"]["p50"], "hi": data["e2e_ms"]["p50"]}


def test_a_step_s_expected_error_is_its_kind_s_then_the_whole_step_s_then_none():
    from dooly.uncertainty import expected_step_error
    unc = Uncertainty((), 7.0, "model-out over 3 calibrated models", kind_pct=(("decode", 11.0), ("prefill", 4.0)))
    assert expected_step_error(unc, [(1, 100), (1, 50)]) == (11.0, "decode steps, model-out over 3 calibrated models")
    assert expected_step_error(unc, [(512, 0)])[0] == 4.0
    # no mixed step was calibrated: the whole step's error stands for it
    assert expected_step_error(unc, [(512, 0), (1, 50)]) == (7.0, "whole steps, model-out over 3 calibrated models")
    pct, why = expected_step_error(Uncertainty(step_source="none: no engine-step model"), [(1, 1)])
    assert pct is None and "dooly calibrate" in why


def test_predict_states_the_expected_error_of_the_batch_s_step_kind(tmp_path, capsys):
    db, _ = _pool_db(tmp_path)
    out = tmp_path / "p.json"
    assert main(["predict", SMOL, "--db", db, "--batch", "decode:8@256", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["expected_error_source"] == "decode steps, in-sample, its own 30 calibrated steps"
    assert 0 < data["expected_error_pct"] < 50
    assert f"± {data['expected_error_pct']:.1f}%" in " ".join(capsys.readouterr().out.split())
