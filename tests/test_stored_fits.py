"""Fits computed once by `dooly fit`, stored as data, and reused by predict, simulate and
export until the measurements they were fitted on change; one rule picks the environment."""
import json
import sqlite3

import pytest

from conftest import config
from dooly.cli import main
from dooly.config import load_config
from dooly.db import Store
from dooly.db.envs import choose_environment
from dooly.env import Environment, Measurement
from dooly.errors import DoolyInputError
from dooly.fit import select
from dooly.fit.gemm_family import GemmFamily
from dooly.fit.stored import FAMILY_KEY
from dooly.predict import Prediction, Predictor
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import TensorSig, Unit

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")
ENV = Environment("cpu0", "cpu", "transformers", "5", "sdpa", "bfloat16")
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)


def gemm(n: int, k: int) -> Unit:
    def sig(*dims):
        return TensorSig(tuple(DimLabel(d, Label.REQUEST) if isinstance(d, str) else DimLabel(d, Label.CONFIG)
                               for d in dims), "bfloat16")
    return Unit("linear", (sig("T", k), sig(n, k)), (sig("T", n),))


def gemm_ms(t: int, n: int, k: int) -> float:
    return 0.01 + 2 * t * n * k / 5e10 * 1e3


def add_points(store, unit: Unit, n: int, k: int, tokens=TOKENS, env=ENV) -> None:
    for t in tokens:
        ms = gemm_ms(t, n, k)
        store.add_measurement(Measurement(unit.key, env.key, {"T": t}, ms, ms, ms, ms, 0.0, 5))


MEASURED = [(512, 256), (1024, 256), (256, 512)]
UNMEASURED = (1536, 384)  # in the model's inventory, answered by the GEMM family


@pytest.fixture
def db(tmp_path):
    """SmolLM's inventory of four GEMMs, three measured, in one environment."""
    path = str(tmp_path / "fits.db")
    units = [gemm(n, k) for n, k in MEASURED + [UNMEASURED]]
    with Store.open(path) as s:
        s.add_environment(ENV)
        for u, (n, k) in zip(units, MEASURED + [UNMEASURED]):
            s.add_unit(u)
            if (n, k) != UNMEASURED:
                add_points(s, u, n, k)
        s.set_inventory(load_config(SMOL).hash, "transformers", "smol", {u.key: 2 for u in units})
    return path


@pytest.fixture
def counted(monkeypatch):
    """How many times model selection and the GEMM family's fit ran."""
    calls = {"select_model": 0, "family_fit": 0}
    select_model, family_fit = select.select_model, GemmFamily.fit

    def counting_select(*a, **kw):
        calls["select_model"] += 1
        return select_model(*a, **kw)

    def counting_fit(self, rows):
        calls["family_fit"] += 1
        return family_fit(self, rows)
    monkeypatch.setattr(select, "select_model", counting_select)
    monkeypatch.setattr(GemmFamily, "fit", counting_fit)
    return calls


def test_predict_after_fit_selects_no_model(db, counted):
    before = Predictor.load(SMOL, db)
    assert sorted(before.refitted) == sorted([gemm(n, k).key for n, k in MEASURED] + [FAMILY_KEY])
    assert main(["fit", "--db", db]) == 0
    counted.update(select_model=0, family_fit=0)
    after = Predictor.load(SMOL, db)
    assert counted == {"select_model": 0, "family_fit": 0} and after.refitted == []
    assert gemm(*UNMEASURED).key in after.fallback
    batch = [(64, 0), (1, 100), (1, 200)]
    assert after.predict(batch).breakdown == pytest.approx(before.predict(batch).breakdown)


def test_fit_stores_choice_coefficients_error_and_fingerprint(db):
    assert main(["fit", "--db", db]) == 0
    with Store.open(db) as s:
        stored = s.fits(ENV.key)
        u = gemm(*MEASURED[0])
        meas = s.measurements(unit_key=u.key, env_key=ENV.key)
    model = stored[u.key]["model"]
    assert stored[u.key]["fingerprint"] == model["fingerprint"] == select.fingerprint("tokens", meas)
    assert model["name"] in model["cv_by_candidate"] and model["cv_mape_pct"] is not None
    assert model["estimator"]["state"]  # knots or coefficients, not a pickle
    family = stored[FAMILY_KEY]["model"]
    assert family["holdout_mape_pct"] > 0
    assert len(family["family"]["state"]["devices"][ENV.key]) == 3  # roofline coefficients


def test_second_fit_keeps_fresh_fits_and_refits_only_changed(db, counted):
    assert main(["fit", "--db", db]) == 0
    with Store.open(db) as s:
        first = {k: v["timestamp"] for k, v in s.fits(ENV.key).items()}
    counted.update(select_model=0, family_fit=0)
    assert main(["fit", "--db", db]) == 0
    assert counted == {"select_model": 0, "family_fit": 0}
    changed = gemm(*MEASURED[1])
    with Store.open(db) as s:
        assert {k: v["timestamp"] for k, v in s.fits(ENV.key).items()} == first
        add_points(s, changed, *MEASURED[1], tokens=(256,))
    pred = Predictor.load(SMOL, db)
    assert sorted(pred.refitted) == sorted([changed.key, FAMILY_KEY])
    assert counted["select_model"] == 1


def test_stale_fits_are_named_on_stderr(db, capsys):
    assert main(["predict", SMOL, "--db", db, "--batch", "prefill:16"]) == 0
    assert "4 stored fits were missing or stale" in capsys.readouterr().err
    assert main(["fit", "--db", db]) == 0
    capsys.readouterr()
    out_path = db + ".json"
    assert main(["predict", SMOL, "--db", db, "--batch", "prefill:16", "--json", out_path]) == 0
    assert capsys.readouterr().err == ""
    with open(out_path) as f:
        out = json.load(f)
    assert out["refitted"] == [] and out["step_ms"] == pytest.approx(out["units_ms"])


def test_unreadable_stored_fit_is_fitted_anew(db):
    assert main(["fit", "--db", db]) == 0
    u = gemm(*MEASURED[0])
    conn = sqlite3.connect(db)
    conn.execute("UPDATE fits SET model_json = ? WHERE unit_key = ?",
                 (json.dumps({"name": "x", "estimator": {"kind": "from-the-future"}}), u.key))
    conn.commit()
    conn.close()
    assert Predictor.load(SMOL, db).refitted == [u.key]


def test_model_without_inventory_is_one_line_error(tmp_path, capsys, monkeypatch):
    import dooly.engines
    monkeypatch.setattr(dooly.engines, "capture", lambda *a, **k: pytest.fail("captured"))
    path = str(tmp_path / "e.db")
    with Store.open(path) as s:
        s.add_environment(ENV)
    assert main(["predict", SMOL, "--db", path, "--batch", "prefill:8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no inventory" in err[0]
    assert "dooly sweep" in err[0] and "dooly analyze" in err[0]


def test_step_ms_is_units_plus_engine_floored_at_half_the_units(db):
    assert Prediction(10.0, {}, 2.5).step_ms == 12.5
    assert Prediction(10.0, {}, -8.0).step_ms == 5.0

    class Engine:
        def predict_one(self, seqs, units_ms=0.0, gemm_ms=0.0):
            return -1e6
    pred = Predictor.load(SMOL, db)
    pred.engine_step = Engine()
    r = pred.predict([(32, 0)])
    assert r.engine_ms == -1e6 and pred.step_ms([(32, 0)]) == r.step_ms == 0.5 * r.units_ms


# ---------------------------------------------------------------- environments

def test_choose_environment_prefers_the_best_covered(db):
    other = Environment("cpu1", "cpu", "transformers", "5", "sdpa", "bfloat16")
    vllm = Environment("cpu0", "cpu", "vllm", "0.32", "CPU_ATTN", "bfloat16")
    with Store.open(db) as s:
        for e in (other, vllm):
            s.add_environment(e)
        s.add_measurement(Measurement(gemm(*MEASURED[0]).key, other.key, {"T": 1}, 1.0))
        assert choose_environment(s).key == ENV.key
        assert choose_environment(s, "transformers").key == ENV.key
        assert choose_environment(s, "vllm").key == vllm.key
        assert choose_environment(s, env_key=other.key).key == other.key
        with pytest.raises(DoolyInputError, match="--env"):
            choose_environment(s, env_key="nope")
        with pytest.raises(DoolyInputError, match="runs engine transformers"):
            choose_environment(s, "vllm", other.key)
        with pytest.raises(DoolyInputError, match="no environment for engine sglang"):
            choose_environment(s, "sglang")


def test_a_model_is_predicted_where_its_units_were_measured_not_where_most_points_are(db):
    # a tensor-parallel sweep into the same DB adds the ranks' environment (fewer threads),
    # often with more points than the TP=1 sweep: a TP=1 model must still get its own
    ranks = Environment("cpu0", "cpu", "transformers", "5", "sdpa", "bfloat16", threads=1)
    shard = gemm(128, 256)
    with Store.open(db) as s:
        s.add_environment(ranks)
        s.add_unit(shard)
        add_points(s, shard, 128, 256, tokens=tuple(range(1, 200)), env=ranks)
        assert choose_environment(s).key == ranks.key      # by points alone
        needed = s.inventory(load_config(SMOL).hash, "transformers")
        assert choose_environment(s, needs=needed).key == ENV.key
        assert choose_environment(s, needs=lambda e: needed).key == ENV.key
    assert Predictor.load(SMOL, db).env.key == ENV.key


@pytest.mark.parametrize("argv", [["fit", "--db", "{db}", "--env", "nope"],
                                  ["predict", SMOL, "--db", "{db}", "--batch", "prefill:8", "--env", "nope"],
                                  ["simulate", SMOL, "--db", "{db}", "--rate", "1", "--num-requests", "2",
                                   "--env", "nope"],
                                  ["export", "vidur", SMOL, "--db", "{db}", "--out", "{out}", "--env", "nope"]])
def test_every_reader_takes_env(db, tmp_path, capsys, argv):
    argv = [a.format(db=db, out=tmp_path / "o") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'--env'" in err[0] and "no environment nope" in err[0]


def test_analyze_db_records_the_inventory_only_in_an_existing_db(tmp_path, capsys):
    from dooly.analyze import analyze
    from dooly.profile.plan import plan_against_db
    missing = tmp_path / "none.db"
    assert main(["analyze", SMOL, "--engine", "transformers", "--db", str(missing), "--quiet"]) == 2
    assert not missing.exists()
    path = str(tmp_path / "a.db")
    with Store.open(path) as s:
        s.add_environment(ENV)
    analysis = analyze([SMOL], "transformers")
    with pytest.raises(DoolyInputError, match="--env"):
        plan_against_db(analysis, path, "nope", "cpu")
    with Store.open(path) as s:
        assert s.inventory(load_config(SMOL).hash, "transformers") == {}
    plan = plan_against_db(analysis, path, None, "cpu")
    assert plan["env"] == ENV.key and plan["measured_units"] == []
    with Store.open(path) as s:
        inv = s.inventory(load_config(SMOL).hash, "transformers")
        assert inv and all(s.get_unit(k) is not None for k in inv)
    capsys.readouterr()
    # predict now finds the model and names what is not measured, not the inventory
    assert main(["predict", SMOL, "--db", path, "--batch", "prefill:8"]) == 2
    assert "no measurements for unit" in capsys.readouterr().err
