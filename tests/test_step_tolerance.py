"""The step tolerance of a check: a unit's check errors weighed by its share of its model's
units (an upper bound read from the DB), so a unit that is a sliver of the step may be
family-served though it misses the 3% rule. Synthetic units and a fake timer: no engine."""
from __future__ import annotations

import pytest

import dooly.profile.sweep_units as su
from dooly.profile.sweep import SweepSummary
from conftest import config
from dooly.cli import main
from dooly.db import Store
from dooly.env import Measurement
from dooly.fit.checks import CheckVerdict
from dooly.fit.family_store import served_models, stored_verdicts
from dooly.profile.checkpoints import SweepPolicy, heaviest_first
from dooly.profile.shares import batch_of, check_shares
from test_checkpoints import BENT, LIM, fake_ms
from test_families import ENV, gemm_ms, linear

POINTS = ({"T": 2}, {"T": 32}, {"T": 256})
MISSED = (1.0, 1.25, 1.0)          # a 25% bend at the middle check point


def verdict(shares=(), step=None) -> CheckVerdict:
    return CheckVerdict("u", "f", "e", POINTS, MISSED, (1.0, 1.0, 1.0), 3.0, "fp", "", shares, step)


def test_a_verdict_is_served_when_its_weighted_errors_are_within_the_step_tolerance():
    assert not verdict().served and verdict().step_error_pct is None
    sliver = verdict((0.01, 0.01, 0.01), 0.5)
    assert sliver.served and sliver.error_pct > 3.0 and sliver.step_error_pct <= 0.5
    assert not verdict((0.5, 0.5, 0.5), 0.5).served        # half the step: the miss shows
    assert not verdict((0.01, 0.01, 0.01)).served          # shares alone change nothing
    assert CheckVerdict.from_json(sliver.to_json()) == sliver
    assert sliver.fingerprint() != verdict().fingerprint()
    with pytest.raises(ValueError, match="shares"):
        verdict((0.5, 0.5), 0.5)
    with pytest.raises(ValueError, match="shares"):
        verdict((0.0, 0.5, 0.5), 0.5)
    with pytest.raises(ValueError, match="step_tolerance_pct"):
        verdict((0.1, 0.1, 0.1), 100.0)


def test_a_check_point_stands_for_the_step_of_its_batch():
    assert batch_of({"T": 64}) == (64.0, 1.0)                  # one prefill
    assert batch_of({"B": 8}) == (8.0, 8.0)                    # eight decodes
    assert batch_of({"seqs": [[1, 10], [5, 0]]}) == (6.0, 2.0)
    assert batch_of({}) is None


def _store_with(tmp_path, inventory: dict, swept: dict):
    s = Store.open(tmp_path / "sh.db")
    s.add_environment(ENV)
    for u, ts in swept.items():
        s.add_unit(u)
        for t in ts:
            s.add_measurement(Measurement(u.key, ENV.key, {"T": t}, gemm_ms(u, t), samples=5))
    for u in inventory:
        s.add_unit(u)
    s.set_inventory("hash-m", "vllm", "m", {u.key: n for u, n in inventory.items()})
    return s


def test_a_share_counts_the_models_other_units_only_where_the_db_can_read_them(tmp_path):
    small, big, lone = linear(256, 256), linear(2048, 8192), linear(512, 512)
    with _store_with(tmp_path, {small: 2, big: 3, lone: 1}, {big: (8, 16, 64, 256), lone: (8,)}) as s:
        rows = [Measurement(small.key, ENV.key, {"T": t}, gemm_ms(small, t), samples=5) for t in (4, 16, 128)]
        shares = check_shares(s, ENV.key, "vllm", small, rows)
        for m in rows:
            own = 2 * m.median_ms
            t = m.point["T"]
            # below big's smallest point its time is scaled down in proportion; `lone` has one
            # point, no curve, and counts zero: the share can only come out larger
            rest = 3 * (gemm_ms(big, 8) * t / 8 if t < 8 else gemm_ms(big, t))
            assert shares[m.point_json] == pytest.approx(own / (own + rest), rel=0.05)
            assert shares[m.point_json] >= own / (own + rest + gemm_ms(lone, t)) - 1e-12
        nobody = linear(128, 128)                                # in no inventory: the whole step
        one = [Measurement(nobody.key, ENV.key, {"T": 8}, 1.0, samples=5)]
        assert check_shares(s, ENV.key, "vllm", nobody, one) == {one[0].point_json: 1.0}


@pytest.fixture
def fake_timer(monkeypatch):
    def measure(runners, timer, unit, point, env):
        ms = fake_ms(unit, point)
        return Measurement(unit.key, env.key, point, ms, ms, ms, ms, 0.0, 5)
    monkeypatch.setattr(su, "measure_point", measure)


@pytest.mark.parametrize("step", [None, 0.5])
def test_a_sweep_with_a_step_tolerance_serves_a_sliver_the_3pct_rule_sweeps(tmp_path, fake_timer, step):
    heavy = linear(1024, 1024)        # swept in full first, then a thousand calls a step
    with Store.open(tmp_path / f"s{step}.db") as s:
        s.add_environment(ENV)
        for u in (heavy, BENT):
            s.add_unit(u)
        s.set_inventory("hash-m", "vllm", "m", {heavy.key: 1000, BENT.key: 1})
        policy = SweepPolicy(s, ENV.key, 3.0, True, False, step_tolerance_pct=step, engine="vllm")
        job = su.SweepJob(s, ENV, LIM, None, None, SweepSummary(ENV.key), None, policy)
        for u in (heavy, BENT):
            assert job.unit(u.key, u)
        v = policy.verdicts[BENT.key]
        assert v.error_pct > 3.0                           # its 40% bend misses the classic rule
        n = len(s.measurements(unit_key=BENT.key))
        served, _ = served_models(s, ENV.key, {u.key: u for u in (heavy, BENT)}, s.measurements())
        if step is None:
            assert not v.served and not v.shares and n > 3 and BENT.key not in served
        else:   # a sliver of the step: served from its three check points, shares kept with it
            assert v.served and v.step_error_pct <= 0.5 and n == 3
            assert stored_verdicts(s, ENV.key)[BENT.key].shares == v.shares
            assert BENT.key in served                      # judged again with its stored shares


def test_a_step_tolerance_sweeps_the_heaviest_units_first_so_later_shares_see_them():
    small, wide, mid = linear(64, 64), linear(2048, 8192), linear(512, 512)
    order = list(heaviest_first({u.key: u for u in (small, wide, mid)}, LIM).values())
    assert order == [wide, mid, small]


def test_a_step_tolerance_without_families_is_one_line_and_exit_2(tmp_path, capsys):
    db = tmp_path / "x.db"
    rc = main(["sweep", config("Qwen__Qwen3-0.6B"), "--db", str(db), "--step-tolerance", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--step-tolerance" in err[0] and "--families" in err[0]
    assert not db.exists()


def test_analyze_shows_a_weighed_checks_share_of_the_step():
    from dooly.cli.report import unit_state
    plan = {"units": {"a": {"status": "family-served", "check_error_pct": 12.3, "check_step_error_pct": 0.05},
                      "b": {"status": "family-served", "check_error_pct": 1.2, "check_step_error_pct": None}}}
    assert unit_state(plan, "a", set()) == "family (12.3%, 0.05% of the step)"
    assert unit_state(plan, "b", set()) == "family (1.2%)"
