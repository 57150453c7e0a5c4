"""The engine step beyond the units: whole real steps stored as data, the residual fitted
against whatever the units predict at load time."""
import random

from dooly.db import Store
from dooly.env import Environment
from dooly.fit.step_model import StepResidual, engine_step_unit, fit_residual, record_steps

ENV = Environment("cpu0", "cpu", "vllm", "0.32", "CPU_ATTN", "bfloat16", threads=2)


def _units_ms(seqs):
    return 0.5 * sum(q for q, _ in seqs) + 10.0   # stand-in for the units' prediction


def _real_step(seqs):   # per step 4 ms, per decode 0.3 ms, per prefill -6 ms
    n_pre = sum(1 for q, _ in seqs if q > 1)
    return _units_ms(seqs) + 4.0 + 0.3 * (len(seqs) - n_pre) - 6.0 * n_pre


def _batches(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            out.append([[1, rng.randint(10, 900)] for _ in range(rng.randint(1, 40))])
        else:
            out.append([[rng.randint(16, 2048), 0]] + [[1, 300]] * rng.randint(0, 6))
    return out


def test_residual_recovers_step_terms_and_may_be_negative():
    batches = _batches(60)
    r = StepResidual().fit(batches, [_real_step(b) for b in batches], [_units_ms(b) for b in batches])
    assert abs(r.predict_one([[1, 100]]) - 4.3) < 0.05
    assert r.predict_one([[2048, 0]]) < 0   # units over-predict prefills here
    assert r.in_sample_mape_pct_ < 0.5


def test_noisy_step_does_not_pull_the_fit():
    batches = _batches(60, seed=1)
    steps = [_real_step(b) for b in batches]
    steps[3] *= 3   # one step stalled by another process
    r = StepResidual().fit(batches, steps, [_units_ms(b) for b in batches])
    assert abs(r.predict_one([[1, 100]]) - 4.3) < 0.3


def test_repeated_batches_keep_their_median(tmp_path):
    db = str(tmp_path / "c.db")
    steps = [{"batch": [[1, 128]], "ms": ms} for ms in (20.0, 21.0, 90.0)]
    steps += [{"batch": [[64, 0]], "ms": 50.0}, {"batch": [], "ms": 1.0}]
    with Store.open(db) as s:
        assert record_steps(s, ENV, steps, "cfg") == 2
        meas = {str(m.point["seqs"]): m for m in
                s.measurements(unit_key=engine_step_unit("cfg").key, env_key=ENV.key)}
    assert meas[str([[1, 128]])].median_ms == 21.0 and meas[str([[1, 128]])].samples == 3


def test_too_few_calibration_steps_give_no_residual(tmp_path):
    db = str(tmp_path / "d.db")
    with Store.open(db) as s:
        record_steps(s, ENV, [{"batch": [[1, 10 * i]], "ms": 20.0} for i in range(1, 4)], "cfg")
        assert fit_residual(s, ENV.key, "cfg", _units_ms) is None
        record_steps(s, ENV, [{"batch": b, "ms": _real_step(b)} for b in _batches(20)], "cfg")
        assert fit_residual(s, ENV.key, "cfg", _units_ms) is not None


def test_recalibration_replaces_the_earlier_steps(tmp_path):
    db = str(tmp_path / "r.db")
    key = engine_step_unit("cfg").key
    with Store.open(db) as s:
        record_steps(s, ENV, [{"batch": [[1, 10 * i]], "ms": 20.0} for i in range(1, 9)], "cfg")
        record_steps(s, ENV, [{"batch": [[64, 0]], "ms": 50.0}], "cfg")
        assert [m.point["seqs"] for m in s.measurements(unit_key=key, env_key=ENV.key)] == [[[64, 0]]]


def test_interrupted_recalibration_keeps_the_old_steps(tmp_path, monkeypatch):
    from dooly.db.store import Store
    db = str(tmp_path / "i.db")
    key = engine_step_unit("cfg").key
    with Store.open(db) as s:
        record_steps(s, ENV, [{"batch": [[1, 10 * i]], "ms": 20.0} for i in range(1, 9)], "cfg")

    def boom(conn, rows, newer_only):
        raise KeyboardInterrupt
    monkeypatch.setattr(Store, "_upsert", staticmethod(boom))
    with Store.open(db) as s:
        try:
            record_steps(s, ENV, [{"batch": [[64, 0]], "ms": 50.0}], "cfg")
        except KeyboardInterrupt:
            pass
    monkeypatch.undo()
    with Store.open(db) as s:
        assert len(s.measurements(unit_key=key, env_key=ENV.key)) == 8
