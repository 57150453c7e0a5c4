"""The engine-step model: whole real steps stored per calibrated model under its structure,
one model per environment fitted on the pool and applied to a model never calibrated."""
import random

import numpy as np
import pytest

from dooly.db import Store
from dooly.env import Environment
from dooly.fit.step_features import FEATURES, STRUCTURE, engine_step_unit, model_structure
from dooly.fit.step_model import EngineStepModel
from dooly.fit.step_pool import load_step_model, pool_rows, record_steps

ENV = Environment("cpu0", "cpu", "vllm", "0.32", "CPU_ATTN", "bfloat16", threads=2)


def _structure(layers, vocab, kv_width, hidden=1024):
    s = dict.fromkeys(STRUCTURE, 0)
    s.update(layers=layers, attention_full=layers, pieces=layers + 1, hidden=hidden, vocab=vocab,
             kv_width=kv_width, q_width=4 * kv_width, unit_calls=6 * layers)
    return s


# three calibrated models and one held out, each with a structure of its own
POOL = {"m1": _structure(30, 49152, 192), "m2": _structure(24, 151936, 128),
        "m3": _structure(16, 128256, 512)}
HELD_OUT = _structure(28, 100000, 256)   # inside the pool: structure terms interpolate


def _units_ms(structure):
    return lambda seqs: 0.02 * structure["layers"] * sum(q for q, _ in seqs) ** 0.9 + 1.0


def _engine_ms(structure, seqs):
    """The engine's real step beyond the units: per step, per piece, per sequence per layer,
    per prefill chunk (what the pooled model must learn and transfer)."""
    n_pre = sum(1 for q, _ in seqs if q > 1)
    return (3.0 + 0.08 * structure["pieces"] + 0.004 * len(seqs) * structure["layers"]
            + 1.5 * n_pre)


def _batches(n, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            out.append([[1, rng.randint(10, 900)] for _ in range(rng.randint(1, 40))])
        elif r < 0.75:
            out.append([[rng.randint(16, 1024), 0] for _ in range(rng.randint(1, 3))])
        else:
            out.append([[rng.randint(64, 256), rng.randint(0, 512)]] + [[1, 300]] * rng.randint(1, 12))
    return out


def _rows(model, structure, n=40, seed=0, noise=0.0):
    rng = random.Random(seed + 100)
    units = _units_ms(structure)
    rows = []
    for b in _batches(n, seed):
        step = (units(b) + _engine_ms(structure, b)) * (1 + noise * rng.uniform(-1, 1))
        rows.append({"model": model, "structure": structure, "seqs": b, "step_ms": step,
                     "units_ms": units(b)})
    return rows


def _pool_db(tmp_path, models=POOL):
    db = str(tmp_path / "pool.db")
    with Store.open(db) as s:
        for i, (h, st) in enumerate(models.items()):
            units = _units_ms(st)
            steps = [{"batch": b, "ms": units(b) + _engine_ms(st, b)} for b in _batches(30, seed=i)]
            record_steps(s, ENV, steps, st, h)
    return db


def _units_for(models):
    return lambda h: _units_ms(models[h]) if h in models else None


def test_pooled_model_predicts_a_model_it_never_saw():
    rows = [r for i, (h, st) in enumerate(POOL.items()) for r in _rows(h, st, seed=i, noise=0.02)]
    model = EngineStepModel().fit(rows)
    bound = model.bind(HELD_OUT)
    for b in _batches(50, seed=9):
        truth = _engine_ms(HELD_OUT, b)
        assert abs(bound.predict_one(b) - truth) / (truth + _units_ms(HELD_OUT)(b)) < 0.03
        assert bound.predict_one(b) == pytest.approx(model.predict_one(b, HELD_OUT))


def test_one_models_steps_do_not_split_per_step_from_per_layer_arbitrarily():
    """With one structure in the pool, per-step and per-layer terms cannot be told apart:
    the dependent ones get no weight, and the model still fits its own steps."""
    rows = _rows("m1", POOL["m1"], n=60)
    model = EngineStepModel().fit(rows)
    assert model.in_sample_mape_pct_ < 1.0
    names = [f[0] for f in __import__("dooly.fit.step_model", fromlist=["FEATURES"]).FEATURES]
    assert model.coef_[names.index("step_layer")] == 0.0   # collinear with "step" here


def test_outlier_step_does_not_pull_the_fit():
    rows = [r for i, (h, st) in enumerate(POOL.items()) for r in _rows(h, st, seed=i)]
    clean = EngineStepModel().fit(rows)
    rows[5] = dict(rows[5], step_ms=rows[5]["step_ms"] * 3)   # stalled by another process
    noisy = EngineStepModel().fit(rows)
    b = [[1, 300]] * 8
    assert noisy.predict_one(b, HELD_OUT) == pytest.approx(clean.predict_one(b, HELD_OUT), rel=0.05)


def test_model_round_trips_as_data_and_rejects_other_features():
    rows = [r for i, (h, st) in enumerate(POOL.items()) for r in _rows(h, st, seed=i)]
    model = EngineStepModel().fit(rows)
    again = EngineStepModel.from_json(model.to_json())
    assert again.predict_one([[1, 128]] * 4, HELD_OUT) == pytest.approx(model.predict_one([[1, 128]] * 4, HELD_OUT))
    obj = model.to_json()
    obj["features"] = obj["features"][:-1]
    with pytest.raises(ValueError, match="features"):
        EngineStepModel.from_json(obj)


def test_pool_reports_its_models_and_exclude_leaves_a_model_out(tmp_path):
    db = _pool_db(tmp_path)
    with Store.open(db) as s:
        model, source = load_step_model(s, ENV, None, HELD_OUT, _units_for(POOL))
        assert source.startswith("pool(3 models") and model.model.models_ == ["m1", "m2", "m3"]
        model, source = load_step_model(s, ENV, None, HELD_OUT, _units_for(POOL), exclude=["m3"])
        assert source.startswith("pool(2 models") and "m3" not in model.model.models_


def test_uncalibrated_units_leave_a_model_out_of_the_pool(tmp_path):
    db = _pool_db(tmp_path)
    with Store.open(db) as s:
        only = {k: v for k, v in POOL.items() if k != "m2"}   # m2 was never swept here
        _, source = load_step_model(s, ENV, None, HELD_OUT, _units_for(only))
    assert source == "pool(2 models, structure-free terms)"   # the source names its terms



def test_a_model_beyond_the_pools_structures_is_told_which_terms(tmp_path):
    """A target smaller than every pooled model gets their per-step excess as it is: the
    source names the terms it lies beyond, with the pool's range, in the user's units."""
    db = _pool_db(tmp_path)
    small = _structure(40, 32000, 256)   # more layers, smaller vocabulary than any pooled model
    with Store.open(db) as s:
        _, source = load_step_model(s, ENV, None, small, _units_for(POOL))
        _, inside = load_step_model(s, ENV, None, HELD_OUT, _units_for(POOL))
    assert source.startswith("pool(3 models, structure-free terms; beyond its models in ")
    assert "attention layers 40 (pool 16-30)" in source and "vocabulary 32000 (pool 49152-151936)" in source
    assert "beyond" not in inside

class _Cfg:
    def __init__(self, h):
        self.hash = h


def test_per_model_refinement_uses_only_that_models_steps(tmp_path):
    db = _pool_db(tmp_path)
    with Store.open(db) as s:
        model, source = load_step_model(s, ENV, _Cfg("m2"), POOL["m2"], _units_for(POOL), prefer="model")
        assert source == "model" and model.model.models_ == ["m2"]
        # a model never calibrated falls back to the pool
        _, source = load_step_model(s, ENV, _Cfg("new"), HELD_OUT, _units_for(POOL), prefer="model")
        assert source.startswith("pool(3 models")
        # excluded from its own refinement, it gets the others' pool
        _, source = load_step_model(s, ENV, _Cfg("m2"), POOL["m2"], _units_for(POOL), exclude=["m2"],
                                    prefer="model")
        assert source.startswith("pool(2 models")
        assert load_step_model(s, ENV, None, HELD_OUT, _units_for(POOL), prefer="none") == (None, "none")


def test_an_empty_pool_gives_no_model(tmp_path):
    with Store.open(str(tmp_path / "e.db")) as s:
        s.add_environment(ENV)
        assert load_step_model(s, ENV, None, HELD_OUT, _units_for(POOL)) == (None, "none")


def test_steps_are_keyed_by_structure_with_the_hash_as_provenance():
    a, b = engine_step_unit(POOL["m1"], "h1"), engine_step_unit(POOL["m1"], "h2")
    assert a.attr["layers"] == 30 and a.attr["model"] == "h1" and a.key != b.key
    assert engine_step_unit(POOL["m2"], "h1").key != a.key


def test_repeated_batches_keep_their_median(tmp_path):
    steps = [{"batch": [[1, 128]], "ms": ms} for ms in (20.0, 21.0, 90.0)]
    steps += [{"batch": [[64, 0]], "ms": 50.0}, {"batch": [], "ms": 1.0}]
    with Store.open(str(tmp_path / "c.db")) as s:
        assert record_steps(s, ENV, steps, POOL["m1"], "m1") == 2
        rows = {str(r["seqs"]): r for r in pool_rows(s, ENV.key)}
    assert rows[str([[1, 128]])]["step_ms"] == 21.0


def test_a_slow_pass_is_outvoted_whatever_its_step_count(tmp_path):
    """Each pass weighs the same: three steps of one slow pass lose to one step each of two
    others (the median of all five steps would have been the slow pass's)."""
    from dooly.profile.calibrate import tag_pass
    steps = tag_pass([], [{"batch": [[1, 128]], "ms": 30.0}] * 3)
    steps = tag_pass(steps, [{"batch": [[1, 128]], "ms": 20.0}])
    steps = tag_pass(steps, [{"batch": [[1, 128]], "ms": 21.0}, {"batch": [[64, 0]], "ms": 50.0}])
    assert [s["pass"] for s in steps] == [0, 0, 0, 1, 2, 2]
    with Store.open(str(tmp_path / "p.db")) as s:
        assert record_steps(s, ENV, steps, POOL["m1"], "m1") == 2
        rows = {str(r["seqs"]): r for r in pool_rows(s, ENV.key)}
        m = s.measurements(unit_key=engine_step_unit(POOL["m1"], "m1").key, env_key=ENV.key)
    assert rows[str([[1, 128]])]["step_ms"] == 21.0 and rows[str([[64, 0]])]["step_ms"] == 50.0
    assert sorted(x.samples for x in m) == [1, 5]


def test_calibrate_interleaves_the_models_passes_and_hands_each_its_earlier_ones(tmp_path, monkeypatch,
                                                                                    capsys):
    """`dooly calibrate A B --passes 2` runs A, B, A, B: a model's passes lie minutes apart,
    and each run stores the median over that model's passes so far."""
    import dooly.profile.calibrate as cal
    from conftest import config
    from dooly.cli import main
    from dooly.config import load_config
    cfgs = [config("HuggingFaceTB__SmolLM2-135M-Instruct"), config("Qwen__Qwen3-0.6B")]
    calls = []

    def fake(path, db, threads, budget, max_seqs, earlier=()):
        calls.append((load_config(path).name, len(earlier)))
        steps = cal.tag_pass(earlier, [{"batch": [[1, 8]], "ms": 10.0}])
        return {"env_key": "e", "steps": 1, "tagged_steps": steps, "points": 1, "quiet_steps": 1,
                "worker_threads": [2], "pool_models": 2,
                # the second model's engine ran on a host twice as fast as the units' sweep
                "host_change": {"gemm": 0.5, "stream": 1.0} if "Qwen3" in path else None}
    monkeypatch.setattr(cal, "calibrate", fake)
    monkeypatch.setattr(cal, "stored_structure", lambda store, cfg, engine: {})
    assert main(["calibrate", *cfgs, "--db", str(tmp_path / "c.db"), "--passes", "2"]) == 0
    smol, qwen = (load_config(c).name for c in cfgs)
    assert calls == [(smol, 0), (qwen, 0), (smol, 1), (qwen, 1)]
    out = capsys.readouterr()
    assert "(pass 2 of 2)" in out.out
    warned = [line for line in out.err.splitlines() if "reference workload" in line]
    assert len(warned) == 2 and all(qwen in line and "gemm 0.50x" in line for line in warned)


def test_recalibration_replaces_that_models_steps_only(tmp_path):
    with Store.open(str(tmp_path / "r.db")) as s:
        record_steps(s, ENV, [{"batch": [[1, 10 * i]], "ms": 20.0} for i in range(1, 9)], POOL["m1"], "m1")
        record_steps(s, ENV, [{"batch": [[1, 10]], "ms": 30.0}], POOL["m2"], "m2")
        record_steps(s, ENV, [{"batch": [[64, 0]], "ms": 50.0}], POOL["m1"], "m1")
        rows = pool_rows(s, ENV.key)
    assert sorted((r["model"], str(r["seqs"])) for r in rows) == [("m1", "[[64, 0]]"), ("m2", "[[1, 10]]")]


def test_interrupted_recalibration_keeps_the_old_steps(tmp_path, monkeypatch):
    db = str(tmp_path / "i.db")
    with Store.open(db) as s:
        record_steps(s, ENV, [{"batch": [[1, 10 * i]], "ms": 20.0} for i in range(1, 9)], POOL["m1"], "m1")

    def boom(conn, rows, newer_only):
        raise KeyboardInterrupt
    monkeypatch.setattr(Store, "_upsert", staticmethod(boom))
    with Store.open(db) as s, pytest.raises(KeyboardInterrupt):
        record_steps(s, ENV, [{"batch": [[64, 0]], "ms": 50.0}], POOL["m1"], "m1")
    monkeypatch.undo()
    with Store.open(db) as s:
        assert len(pool_rows(s, ENV.key)) == 8


def test_steps_stored_before_structure_attrs_get_it_from_the_inventory(tmp_path):
    from dooly.unit import Unit
    old = Unit(op="engine.step", inputs=(), outputs=(), attrs=(("driver", "attention"), ("model", "m1")))
    from dooly.env import Measurement
    with Store.open(str(tmp_path / "o.db")) as s:
        s.add_environment(ENV)
        s.add_unit(old)
        s.add_measurement(Measurement(old.key, ENV.key, {"seqs": [[1, 100]]}, 20.0, 20.0, 20.0, 20.0, 0.0, 1))
        assert pool_rows(s, ENV.key) == []
        rows = pool_rows(s, ENV.key, structure_of=lambda h: POOL.get(h))
    assert rows[0]["structure"] == POOL["m1"] and rows[0]["model"] == "m1"


def _sig(*dims):
    from dooly.symbolic.labels import DimLabel, Label
    from dooly.unit import TensorSig
    return TensorSig(tuple(DimLabel(x, Label.REQUEST) if isinstance(x, str) else DimLabel(x, Label.CONFIG)
                           for x in dims), "bfloat16")


def test_structure_comes_from_the_inventory():
    from dooly.unit import Unit
    att = lambda window: Unit("vllm.unified_attention_with_output", (_sig("T", 8, 64),), (), stateful=True,  # noqa: E731
                              attrs=(("head_size", 64), ("num_heads", 8), ("num_kv_heads", 2),
                                     ("sliding_window", window)))
    kv = Unit("vllm.unified_kv_cache_update", (_sig("T", 2, 64),), (), stateful=True)
    head = Unit("linear", (_sig("B", 512), _sig(32000, 512)), (_sig("B", 32000),),
                attrs=(("bias", False), ("role", "lm_head")))
    gemm = Unit("linear", (_sig("T", 512), _sig(1536, 512)), (_sig("T", 1536),))
    units = {u.key: u for u in (att(0), att(4096), kv, head, gemm)}
    counts = {att(0).key: 6, att(4096).key: 6, kv.key: 12, head.key: 1, gemm.key: 12}
    s = model_structure(None, counts, units)
    assert (s["layers"], s["attention_full"], s["attention_sliding"], s["pieces"]) == (12, 6, 6, 13)
    assert (s["vocab"], s["hidden"], s["kv_width"], s["q_width"]) == (32000, 512, 128, 512)
    assert s["unit_calls"] == 24   # the KV writes and the GEMMs; not the attention or the head


def test_predictor_uses_the_pool_for_a_model_never_calibrated(tmp_path):
    """Predictor.load: the pool of the other models' steps, each model's units from its own
    inventory; the held-out model's own steps are left out on request; the source is said."""
    from conftest import config
    from dooly.config import load_config
    from dooly.env import Measurement
    from dooly.predict import Predictor
    from dooly.unit import Unit
    smol = config("HuggingFaceTB__SmolLM2-135M-Instruct")
    me = load_config(smol).hash
    db = str(tmp_path / "p.db")
    gemm = {h: Unit("linear", (_sig("T", 64 * (i + 1)), _sig(128, 64 * (i + 1))), (_sig("T", 128),))
            for i, h in enumerate(["m1", "m2", "m3", me])}
    structures = dict(POOL, **{me: HELD_OUT})
    truth = lambda h, b: 30 * 0.01 * sum(q for q, _ in b) + _engine_ms(structures[h], b)  # noqa: E731
    with Store.open(db) as s:
        s.add_environment(ENV)
        for h, u in gemm.items():
            s.add_unit(u)
            s.set_inventory(h, "vllm", h, {u.key: 30})
            for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048):
                s.add_measurement(Measurement(u.key, ENV.key, {"T": t}, 0.01 * t, 0.01 * t, 0.01 * t, 0.01 * t, 0.0, 5))
        for i, h in enumerate(["m1", "m2", "m3", me]):
            record_steps(s, ENV, [{"batch": b, "ms": truth(h, b) * (3.0 if h == me else 1.0)}   # me: way off
                                  for b in _batches(30, seed=i)], structures[h], h)
    out = Predictor.load(smol, db, "vllm", exclude=[me])
    assert out.step_model_source.startswith("pool(3 models")
    b = [[1, 300]] * 8 + [[128, 0]]
    assert out.predict(b).step_ms == pytest.approx(0.3 * 136 + _engine_ms(out.structure, b), rel=0.05)
    own = Predictor.load(smol, db, "vllm", step_model="model")
    assert own.step_model_source == "model" and own.predict(b).step_ms > 1.5 * out.predict(b).step_ms
    none = Predictor.load(smol, db, "vllm", step_model="none")
    assert none.step_model_source == "none" and none.predict(b).engine_ms == 0.0


def test_steps_slowed_by_another_process_are_left_out(tmp_path):
    """A step whose threads were off their cores for part of it (low CPU share) is the
    host's noise: with enough quiet steps, calibration keeps only those."""
    steps = [{"batch": [[1, 10 * i]], "ms": 20.0, "cpu_ms": 39.0} for i in range(1, 13)]
    steps += [{"batch": [[1, 500]], "ms": 90.0, "cpu_ms": 90.0}]   # half its time off the cores
    with Store.open(str(tmp_path / "q.db")) as s:
        assert record_steps(s, ENV, steps, POOL["m1"], "m1", threads=2) == 12
        assert record_steps(s, ENV, steps[-4:], POOL["m1"], "m1", threads=2) == 4   # too few: all kept


def test_a_pool_of_two_models_fits_no_structure_terms():
    """Two models cannot say how a term grows with layers: their pool keeps the per-step,
    per-sequence and per-chunk terms only, and a stored model says which it used."""
    from dooly.fit.step_model import EngineStepModel
    from dooly.fit.step_pool import STRUCTURE_MODELS, TERM_SETS, select_terms
    rows = [{"model": m, "seqs": [[1, 64]] * b, "structure": {}, "step_ms": 1.0, "units_ms": 1.0}
            for m in ("a", "b") for b in (1, 2)]
    assert STRUCTURE_MODELS > 2 and select_terms(rows) == TERM_SETS["structure-free"]
    m = EngineStepModel(("step", "seq"))
    m.coef_, m.models_, m.n_rows_, m.in_sample_mape_pct_ = np.zeros(len(FEATURES)), ["a"], 1, 0.0
    assert EngineStepModel.from_json(m.to_json()).terms == ("step", "seq")


def test_kernels_slower_inside_the_engine_are_learned_as_a_share_of_the_units():
    """Units timed alone under the engine's own step by a fixed share (the same kernels
    beside other ops' data in the caches): a pool of three models learns that share and
    carries it to a model it never saw; the model selection picks the set with that term."""
    from dooly.fit.step_pool import TERM_SETS, select_terms
    slow = 0.15
    rows = []
    for i, (h, st) in enumerate(POOL.items()):
        for r in _rows(h, st, seed=i):
            rows.append(dict(r, step_ms=r["step_ms"] + slow * r["units_ms"]))
    assert select_terms(rows) == TERM_SETS["all+units"]
    model = EngineStepModel(TERM_SETS["all+units"]).fit(rows)
    units = _units_ms(HELD_OUT)
    for b in _batches(30, seed=5):
        truth = units(b) * (1 + slow) + _engine_ms(HELD_OUT, b)
        pred = units(b) + model.predict_one(b, HELD_OUT, units_ms=units(b))
        assert abs(pred - truth) / truth < 0.03


def test_structure_terms_interpolate_between_the_pools_models_and_never_extrapolate(tmp_path):
    """A line through three models' per-layer costs says nothing past them (a real pool of
    three put a 30-layer model past its 16-28 and took half its units off every step): a
    model whose layers, widths or vocabulary lie outside the pool's range gets the
    structure-free terms, one inside it the term set the pool chose."""
    from dooly.fit.step_pool import TERM_SETS, inside_pool, select_terms
    rows = [r for i, (h, st) in enumerate(POOL.items()) for r in _rows(h, st, seed=i)]
    chosen = select_terms(rows)
    assert chosen != TERM_SETS["structure-free"] and select_terms(rows, HELD_OUT) == chosen
    for outside in (_structure(40, 100000, 256), _structure(28, 32000, 256), _structure(28, 100000, 1024)):
        assert not inside_pool(rows, outside)
        assert select_terms(rows, outside) == TERM_SETS["structure-free"]
    db = _pool_db(tmp_path)
    with Store.open(db) as s:
        model, _ = load_step_model(s, ENV, None, _structure(40, 100000, 256), _units_for(POOL))
    assert model.model.terms == TERM_SETS["structure-free"]


def test_a_model_smaller_than_the_pool_gets_its_engine_work_as_a_share_of_its_units(tmp_path):
    """Engine work that grows with the model (here 20% of its units) reads as milliseconds
    per step on three larger models; carried as milliseconds to a model a third their size
    it doubles that model's excess. Below every pooled model (its units faster at their
    batches) the pool's work is carried as a share of the units; within or above the pool,
    and for a model's own calibration, the per-step and per-sequence terms stay."""
    from dooly.fit.step_pool import TERM_SETS, select_terms, smaller_than_pool
    share = 0.2
    rows = []
    for i, (h, st) in enumerate(POOL.items()):
        for r in _rows(h, st, seed=i):
            rows.append(dict(r, step_ms=r["units_ms"] * (1 + share)))
    small = _structure(6, 100000, 256)     # 6 layers: its units a fifth of the pool's or less
    units = _units_ms(small)
    assert smaller_than_pool(rows, units)
    assert select_terms(rows, small, units) == TERM_SETS["proportional"]
    assert select_terms(rows, small) == TERM_SETS["structure-free"]   # its units unknown
    big = _structure(40, 100000, 256)
    assert not smaller_than_pool(rows, _units_ms(big))
    assert select_terms(rows, big, _units_ms(big)) == TERM_SETS["structure-free"]
    errs = {}
    for name in ("proportional", "structure-free"):
        model = EngineStepModel(TERM_SETS[name]).fit(rows)
        errs[name] = np.mean([abs(units(b) + model.predict_one(b, small, units_ms=units(b)) - units(b) * (1 + share))
                              / (units(b) * (1 + share)) for b in _batches(30, seed=7)])
    assert errs["proportional"] < 0.02 < errs["structure-free"]
    # the predictor's own load names the set it chose
    from types import SimpleNamespace
    with Store.open(_pool_db(tmp_path)) as s:
        _, source = load_step_model(s, ENV, SimpleNamespace(hash="small"), small, _units_for(dict(POOL, small=small)))
    assert source.startswith("pool(3 models, proportional terms; beyond its models in ")


def test_a_prefills_gemms_slower_inside_the_engine_carry_from_two_models_to_a_third():
    """A prefill's GEMMs run a share longer in the engine than alone, decode's do not: two
    calibrated models (the structure-free terms) learn that share of their GEMM time, in
    proportion to the step's prefill tokens, and carry it to a model never calibrated."""
    from dooly.fit.step_pool import TERM_SETS, select_terms
    slow = 0.25

    def truth(structure, seqs):
        units = _units_ms(structure)(seqs)
        prefill = [q for q, _ in seqs if q > 1]
        engine = 3.0 + 0.05 * len(seqs) + 1.5 * len(prefill)   # no term that grows with layers
        return units, 0.8 * units, units + engine + slow * 0.8 * units * sum(prefill) / sum(q for q, _ in seqs)

    rows = []
    for i, h in enumerate(("m1", "m2")):
        for b in _batches(40, seed=i):
            units, gemm, step = truth(POOL[h], b)
            rows.append({"model": h, "structure": POOL[h], "seqs": b, "step_ms": step, "units_ms": units,
                         "gemm_ms": gemm})
    assert "prefill_gemm" in select_terms(rows) == TERM_SETS["structure-free"]
    model = EngineStepModel(select_terms(rows)).fit(rows)
    for b in _batches(30, seed=5):
        units, gemm, step = truth(POOL["m3"], b)
        pred = units + model.predict_one(b, POOL["m3"], units_ms=units, gemm_ms=gemm)
        assert abs(pred - step) / step < 0.02


def test_a_term_set_is_fitted_on_its_own_terms_whatever_the_others_would_shadow():
    """With two models, per-sequence cost times vocabulary is a combination of per-sequence
    and per-sequence-per-layer cost; a term set that holds it without those two fits it,
    since neither is in the set to stand in for it."""
    names = [f[0] for f in FEATURES]
    rows = []
    for i, h in enumerate(("m1", "m2")):
        st = POOL[h]
        for b in _batches(40, seed=i):
            units = _units_ms(st)(b)
            rows.append({"model": h, "structure": st, "seqs": b, "units_ms": units,
                         "step_ms": units + 2.0 + 0.5 * len(b) * st["vocab"] / 1e5})
    model = EngineStepModel(("step", "seq_vocab")).fit(rows)
    assert model.coef_[names.index("seq_vocab")] == pytest.approx(0.5, rel=0.02)
    assert model.coef_[names.index("step")] == pytest.approx(2.0, rel=0.02)
