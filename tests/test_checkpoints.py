"""Check points: a unit a family covers is measured at three points spread over its range;
within the tolerance it is family-served (its check error stored beside it), beyond it
is swept in full and joins the family. Synthetic units and a fake timer: no engine."""
from __future__ import annotations

import pytest

import dooly.profile.sweep_units as su
from dooly.profile.sweep import SweepSummary
from conftest import config
from dooly.cli import main
from dooly.db import Store
from dooly.env import Measurement
from dooly.fit.checks import CHECK_PREFIX, CheckVerdict, loo_scaled_errors
from dooly.fit.family_store import check_only, served_models, stored_verdicts
from dooly.profile.checkpoints import SweepPolicy, check_points
from dooly.profile.cost import get_hardware
from dooly.profile.grid import GridLimits, attention_points, token_points
from dooly.profile.plan import family_plan, reuse_with_families, unit_cost, unit_status
from test_families import ENV, attention, gemm_ms, linear

LIM = GridLimits(max_tokens=256, max_batch=8, max_context=64)


def test_check_points_are_three_grid_points_spread_over_the_range():
    grid = token_points(LIM)
    pts = check_points(linear(64, 64), grid)
    ts = [p["T"] for p in pts]
    assert len(pts) == 3 and all(p in grid for p in pts) and ts == sorted(ts)
    assert ts[0] <= 3 and 16 <= ts[1] <= 32 and ts[2] >= 128   # low, middle, high
    att = attention_points(LIM)
    apts = check_points(attention(8, 2, 64), att)
    assert len(apts) == 3 and all(p in att for p in apts)



def test_check_points_on_a_dense_linear_grid_reach_down_to_decode_batches():
    # Vidur's grid: 1, then every 8 tokens to 4096. By rank, the lowest check would sit at a
    # tenth of 259 points (T=192): no check where decode batches live. In log scale it does.
    grid = [{"T": 1}] + [{"T": t} for t in range(8, 4097, 16)]
    ts = [p["T"] for p in check_points(linear(64, 64), grid)]
    assert len(ts) == 3 and ts[0] <= 8 and 32 <= ts[1] <= 128 and ts[2] >= 1024


def test_check_points_stay_distinct_on_a_short_grid():
    grid = [{"B": b} for b in (1, 2, 3, 4, 6)]
    pts = check_points(linear(64, 64), grid)
    assert len({p["B"] for p in pts}) == 3 and all(p in grid for p in pts)

def test_check_error_is_leave_one_out_after_the_units_scale():
    scale, errs = loo_scaled_errors([1.04, 2.08, 4.16], [1.0, 2.0, 4.0])  # 4% slower everywhere
    assert scale == pytest.approx(1.04) and max(errs) < 1e-9
    _, errs = loo_scaled_errors([1.0, 2.4, 4.0], [1.0, 2.0, 4.0])        # a bend the family misses
    assert max(errs) > 10


def test_verdict_validates_and_round_trips():
    v = CheckVerdict("u", "f", "e", ({"T": 1}, {"T": 8}), (1.0, 2.0), (1.0, 2.02), 3.0, "fp")
    assert v.served and CheckVerdict.from_json(v.to_json()) == v
    with pytest.raises(ValueError, match="tolerance_pct"):
        CheckVerdict("u", "f", "e", ({"T": 1},), (1.0,), (1.0,), 0.0)
    with pytest.raises(ValueError, match="one of each"):
        CheckVerdict("u", "f", "e", ({"T": 1},), (1.0, 2.0), (1.0,), 3.0)


BENT = linear(1536, 3072)          # runs 40% slower above 32 tokens: no family predicts that


def fake_ms(unit, point) -> float:
    ms = gemm_ms(unit, point["T"])
    return ms * 1.4 if unit.key == BENT.key and point["T"] > 32 else ms


@pytest.fixture
def fake_timer(monkeypatch):
    calls = []

    def measure(runners, timer, unit, point, env):
        calls.append((unit.key, point["T"]))
        ms = fake_ms(unit, point)
        return Measurement(unit.key, env.key, point, ms, ms, ms, ms, 0.0, 5)
    monkeypatch.setattr(su, "measure_point", measure)
    return calls


def run(store, units, families=True, adaptive=True, tol=3.0):
    policy = SweepPolicy(store, ENV.key, tol, families, adaptive)
    job = su.SweepJob(store, ENV, LIM, None, None, SweepSummary(ENV.key), None, policy)
    for u in units:
        store.add_unit(u)
        assert job.unit(u.key, u)
    return policy


SWEPT = [linear(1024, 1024)]
CHECKED = [linear(2048, 4096), linear(4096, 2048), linear(3072, 1024), BENT]


def test_sweep_checks_covered_units_and_serves_them_from_the_family(tmp_path, fake_timer):
    units = SWEPT + CHECKED
    with Store.open(tmp_path / "s.db") as s:
        s.add_environment(ENV)
        policy = run(s, units)
        n = {u.key: len(s.measurements(unit_key=u.key)) for u in units}
        assert n[SWEPT[0].key] < len(token_points(LIM))    # adaptive: fewer than the whole grid
        good = [u.key for u in CHECKED[:3]]
        assert all(n[k] == 3 for k in good)                # three check points each, then served
        assert all(policy.verdicts[k].served and policy.verdicts[k].error_pct <= 3.0 for k in good)
        assert not policy.verdicts[BENT.key].served        # failed its check: swept in full
        assert n[BENT.key] > 3
        stored = stored_verdicts(s, ENV.key)
        assert set(stored) == {u.key for u in CHECKED}
        assert s.fits(ENV.key)[CHECK_PREFIX + good[0]]["model"]["error_pct"] == \
            pytest.approx(policy.verdicts[good[0]].error_pct)
        by = {u.key: s.measurements(unit_key=u.key) for u in units}
        assert check_only(stored, by) == set(good)         # BENT has points beyond its checks
        models, _ = served_models(s, ENV.key, {u.key: u for u in units}, s.measurements())
        assert set(models) == set(good)
        for t in (5, 100, 256, 700):                       # between, at and past the checks
            want = gemm_ms(CHECKED[2], t)
            assert abs(models[CHECKED[2].key].predict_one({"T": t}) - want) / want < 0.03
        before = len(fake_timer)
        run(s, units)                                      # a second sweep measures nothing
        assert len(fake_timer) == before


def test_a_check_the_second_pass_turns_is_swept_in_full_and_fit_agrees(tmp_path, monkeypatch):
    from dooly.fit.family_store import fit_env_families
    units = SWEPT + CHECKED
    turned = CHECKED[0]
    mid = check_points(turned, token_points(LIM))[1]
    seen = set()

    def measure(runners, timer, unit, point, env):
        ms = fake_ms(unit, point)
        if unit.key == turned.key and point == mid and (unit.key, point["T"]) in seen:
            ms *= 0.85   # its second pass: a burst had slowed the first
        seen.add((unit.key, point["T"]))
        return Measurement(unit.key, env.key, point, ms, ms, ms, ms, 0.0, 5)
    monkeypatch.setattr(su, "measure_point", measure)
    with Store.open(tmp_path / "t.db") as s:
        s.add_environment(ENV)
        policy = SweepPolicy(s, ENV.key, 3.0, True, False)
        job = su.SweepJob(s, ENV, LIM, None, None, SweepSummary(ENV.key), None, policy)
        for u in units:
            s.add_unit(u)
            job.unit(u.key, u)
        assert policy.verdicts[turned.key].served            # judged on the first pass
        su.recheck_points(job, units)
        su.settle_checks(job, {u.key: u for u in units})
        assert not policy.verdicts[turned.key].served
        assert len(s.measurements(unit_key=turned.key)) == len(token_points(LIM))
        _, found, _ = fit_env_families(s, ENV.key)
        served = {k for k, v in found.items() if v.served}
        assert served == {k for k, v in policy.verdicts.items() if v.served} == \
            {u.key for u in CHECKED[1:3]}



def test_a_unit_checked_before_keeps_its_verdicts_points_when_placement_moves(tmp_path, fake_timer, monkeypatch):
    # a DB swept when check points sat elsewhere (placement changed on 2026-12-07): its
    # served units are judged on the points their verdicts hold, not measured again
    import dooly.profile.checkpoints as cp
    units = SWEPT + CHECKED
    with Store.open(tmp_path / "s.db") as s:
        s.add_environment(ENV)
        run(s, units)
        before = len(fake_timer)
        monkeypatch.setattr(cp, "CHECK_FRACTIONS", (0.25, 0.6, 0.95))
        policy = run(s, units)
        assert len(fake_timer) == before
        assert all(policy.verdicts[u.key].served for u in CHECKED[:3])

def test_interrupted_check_sweep_resumes_to_the_same_rows(tmp_path, fake_timer, monkeypatch):
    with Store.open(tmp_path / "full.db") as s:
        s.add_environment(ENV)
        run(s, SWEPT + CHECKED)
        want = sorted((m.unit_key, m.point_json) for m in s.measurements())
    real = su.measure_point
    count = {"n": 0}

    def flaky(*a):
        count["n"] += 1
        if count["n"] == len(want) - 5:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(su, "measure_point", flaky)
    with Store.open(tmp_path / "part.db") as s:
        s.add_environment(ENV)
        with pytest.raises(KeyboardInterrupt):
            run(s, SWEPT + CHECKED)
        monkeypatch.setattr(su, "measure_point", real)
        run(s, SWEPT + CHECKED)
        assert sorted((m.unit_key, m.point_json) for m in s.measurements()) == want


def test_plan_shows_each_units_state_and_counts_check_points(tmp_path, fake_timer):
    hw = get_hardware("h100")
    fresh = linear(5120, 1024)
    with Store.open(tmp_path / "p.db") as s:
        s.add_environment(ENV)
        run(s, SWEPT + CHECKED)
        units = {u.key: u for u in SWEPT + CHECKED + [fresh]}
        st = unit_status(s, ENV.key, units, hw, LIM)
    assert st[SWEPT[0].key]["status"] == "measured"
    assert st[BENT.key]["status"] == "measured"            # swept in full after its check
    assert st[CHECKED[0].key]["status"] == "family-served"
    assert st[CHECKED[0].key]["check_error_pct"] <= 3.0 and st[CHECKED[0].key]["points"] == 0
    assert st[fresh.key]["status"] == "check" and st[fresh.key]["points"] == 3
    assert st[fresh.key]["cost_s"] > 0


def test_family_plan_sweeps_the_first_member_and_checks_the_rest():
    units = [linear(1024, 1024), attention(8, 2, 64), linear(2048, 2048), attention(16, 4, 64)]
    plan = family_plan(units)
    assert [plan[u.key] for u in units] == ["full", "full", "check", "check"]

    class Inv:
        def __init__(self, us):
            self.entries = {u.key: type("E", (), {"unit": u})() for u in us}
    r = reuse_with_families([Inv(units[:2]), Inv(units[2:])], get_hardware("cpu"), LIM)
    assert r["checked_units"] == 2 and r["check_points"] == 6
    assert r["families_cost_s"] < r["dedup_cost_s"] and r["families_reduction_pct"] > r["dedup_reduction_pct"]
    assert "calibrated" in r["cost_model"]
    # what passing checks save, split by op: a pass rate per kind is applied to its own share
    assert set(r["check_savings_by_op"]) == {units[2].op, units[3].op}
    assert sum(r["check_savings_by_op"].values()) == pytest.approx(r["check_savings_s"], abs=2e-3)



def test_adaptive_grids_cut_only_one_axis_units_full_sweeps_in_the_reuse_accounting():
    units = [linear(1024, 1024), attention(8, 2, 64), linear(2048, 2048), attention(16, 4, 64)]

    class Inv:
        def __init__(self, us):
            self.entries = {u.key: type("E", (), {"unit": u})() for u in us}
    invs, hw = [Inv(units[:2]), Inv(units[2:])], get_hardware("cpu")
    fixed = reuse_with_families(invs, hw, LIM)
    assert fixed["dedup_adaptive_reduction_pct"] == fixed["dedup_reduction_pct"]
    half = reuse_with_families(invs, hw, LIM, adaptive_keep=0.5)
    assert half["dedup_reduction_pct"] == fixed["dedup_reduction_pct"]     # exact keys: unchanged
    assert fixed["dedup_reduction_pct"] < half["dedup_adaptive_reduction_pct"] < 50.0 + fixed["dedup_reduction_pct"]
    # the attention unit swept in full is swept whole: what adaptive saves is the GEMM's half
    gemm = unit_cost(units[0], "full", hw, LIM)[1]
    assert fixed["families_cost_s"] - half["families_cost_s"] == pytest.approx(gemm / 2, rel=1e-3)
    with pytest.raises(ValueError, match="adaptive_keep"):
        reuse_with_families(invs, hw, LIM, adaptive_keep=0.0)
    # the exact-key summary costs the same hardware object (a recalibrated CPU, say)
    from dataclasses import replace

    from dooly.analyze import reuse_summary
    cheap = replace(hw, point_overhead_s=hw.point_overhead_s / 10)
    analysis = type("A", (), {"inventories": invs, "failed": []})()
    summary = reuse_summary(analysis, cheap, LIM)
    assert summary["dedup_cost_s"] == pytest.approx(reuse_with_families(invs, cheap, LIM)["dedup_cost_s"], rel=1e-3)
    assert summary["dedup_cost_s"] < reuse_summary(analysis, "cpu", LIM)["dedup_cost_s"]


@pytest.mark.parametrize("value", ["0", "100", "-3", "nan", "x"])
def test_sweep_tolerance_out_of_range_is_one_line(value, tmp_path, capsys):
    rc = main(["sweep", config("Qwen__Qwen3-0.6B"), "--db", str(tmp_path / "x.db"), "--tolerance", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--tolerance" in err[0]
    assert not (tmp_path / "x.db").exists()


def test_predictor_serves_family_served_units_from_their_family(tmp_path, fake_timer):
    from dooly.config import load_config
    from dooly.predict import Predictor
    cfg_path = config("Qwen__Qwen3-0.6B")     # its hash names the inventory; the units are ours
    units = SWEPT + CHECKED
    db = tmp_path / "pred.db"
    with Store.open(db) as s:
        s.add_environment(ENV)
        policy = run(s, units)
        s.set_inventory(load_config(cfg_path).hash, "vllm", "synthetic", {u.key: 2 for u in units})
    pred = Predictor.load(cfg_path, str(db), "vllm")
    served = {k for k, v in policy.verdicts.items() if v.served}
    assert {k for k, how in pred.fallback.items() if how == "family"} == served
    r = pred.predict([(100, 0), (1, 50)])
    for key in served:
        unit = next(u for u in units if u.key == key)
        want = 2 * gemm_ms(unit, 101)
        assert abs(r.breakdown[key] - want) / want < 0.03


def test_cpu_cost_is_calibrated_from_the_seconds_sweeps_took(tmp_path):
    from dooly.profile.cost import HARDWARE, calibrate_cpu, sweep_seconds
    assert sweep_seconds([0, 1, 2, 1000, 1001]) == 3.0       # the hour between two sweeps is not one
    unit = linear(64, 64)
    with Store.open(tmp_path / "c.db") as s:
        s.add_environment(ENV)
        s.add_unit(unit)
        for i, t in enumerate((1, 2, 4, 8, 16, 32)):
            start = 0 if i < 3 else 5000
            ts = 100.0 + start + 1.5 * i
            s.add_measurement(Measurement(unit.key, ENV.key, {"T": t}, 0.01, timestamp=ts))
        hw, fig = calibrate_cpu([s])
    assert fig["points"] == 6 and fig["active_s"] == pytest.approx(6.0)   # 2 x 2 gaps of 1.5 s
    assert hw.point_overhead_s == pytest.approx(1.0, abs=0.01) and "calibrated from 6 points" in hw.source
    assert HARDWARE["h100"].source.startswith("roofline + an assumed")
    with pytest.raises(ValueError, match="no CPU sweep"):
        calibrate_cpu([])


def test_dooly_fit_stores_families_and_check_verdicts_as_data(tmp_path, fake_timer, capsys):
    import json
    db = tmp_path / "fit.db"
    with Store.open(db) as s:
        s.add_environment(ENV)
        run(s, SWEPT + CHECKED)
    assert main(["fit", "--db", str(db), "--json", str(tmp_path / "fit.json")]) == 0
    assert "family-served" in capsys.readouterr().out
    with Store.open(db, readonly=True) as s:
        rows = s.fits(ENV.key)
    fams = [k for k in rows if k.startswith("family:") and "~" in k]   # beside "family:gemm"
    assert len(fams) == 1 and rows[fams[0]]["model"]["kind"] == "family_model"
    assert {k for k in rows if k.startswith(CHECK_PREFIX)} == {CHECK_PREFIX + u.key for u in CHECKED}
    out = json.loads((tmp_path / "fit.json").read_text())["unit_families"][0]
    assert set(out["served"]) == {u.key for u in CHECKED[:3]} and out["failed_checks"] == []


def test_a_unit_whose_every_point_failed_is_unsupported_with_its_reason(tmp_path):
    hw = get_hardware("h100")
    never, partly = linear(7168, 1536), linear(1536, 7168)
    why = "ValueError: Head dimension 80 is not supported by MLA."
    with Store.open(tmp_path / "u.db") as s:
        s.add_environment(ENV)
        s.add_unit(never)
        s.add_unit(partly)
        for t in (1, 8, 64):
            s.add_measurement(Measurement(never.key, ENV.key, {"T": t}, status="failed", reason=why))
        s.add_measurement(Measurement(partly.key, ENV.key, {"T": 1}, status="failed", reason="OOM"))
        s.add_measurement(Measurement(partly.key, ENV.key, {"T": 8}, 0.1, 0.1, 0.1, 0.1, 0.0, 3, 0))
        st = unit_status(s, ENV.key, {u.key: u for u in (never, partly)}, hw, LIM)
    assert st[never.key] == {"status": "unsupported", "points": 0, "cost_s": 0.0,
                             "check_error_pct": None, "check_step_error_pct": None, "reason": why}
    assert st[partly.key]["status"] == "measured"
