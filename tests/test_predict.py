import json
import math

import pytest

from conftest import config
from dooly.cli.batchspec import parse_batch
from dooly.cli import main
from dooly.db import Store
from dooly.env import Environment
from dooly.errors import DoolyInputError, MissingDataError


def test_batch_spec_expands_prefill_and_decode():
    assert parse_batch("prefill:512x2,decode:3@1024") == [(512, 0), (512, 0)] + [(1, 1024)] * 3
    assert parse_batch("prefill:64@128") == [(64, 128)]


@pytest.mark.parametrize("spec", ["prefill:", "decode:4x2@8", "foo:1", "prefill:0"])
def test_bad_batch_spec_exits_2(spec, capsys, tmp_path):
    db = tmp_path / "x.db"
    Store.open(str(db)).close()
    assert main(["predict", config("HuggingFaceTB__SmolLM2-135M-Instruct"), "--db", str(db),
                 "--batch", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch" in err[0]


def test_bad_batch_file_names_the_file(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"seqs": [[4, 0], [0, 3]]}))
    with pytest.raises(DoolyInputError, match=str(p)):
        parse_batch("@" + str(p))


def _sig(*dims):
    from dooly.symbolic.labels import DimLabel, Label
    from dooly.unit import TensorSig
    return TensorSig(tuple(DimLabel(x, Label.REQUEST) if isinstance(x, str) else DimLabel(x, Label.CONFIG)
                           for x in dims), "bfloat16")


def _gemm(n, k):
    from dooly.unit import Unit
    return Unit("linear", (_sig("T", k), _sig(n, k)), (_sig("T", n),))


def test_unit_without_data_is_a_clear_error(tmp_path):
    from dooly.config import load_config
    from dooly.predict import Predictor
    from dooly.unit import Unit
    smol = config("HuggingFaceTB__SmolLM2-135M-Instruct")
    db = str(tmp_path / "e.db")
    env = Environment("cpu0", "cpu", "transformers", "5", "sdpa", "bfloat16")
    norm = Unit("rms_norm", (_sig("T", 576),), (_sig("T", 576),))
    with Store.open(db) as s:
        s.add_environment(env)
        s.add_unit(norm)
        s.set_inventory(load_config(smol).hash, "transformers", "smol", {norm.key: 30})
    with pytest.raises(MissingDataError) as err:
        Predictor.load(smol, db, "transformers")
    assert "no measurements for unit" in str(err.value) and env.label() in str(err.value)
    assert "sweep this model first" in str(err.value)
    # a unit the device could not run at any point says why, instead of asking for a sweep
    from dooly.env import Measurement
    with Store.open(db) as s:
        s.add_measurement(Measurement(norm.key, env.key, {"T": 8}, status="failed",
                                      reason="NotImplementedError: no kernel for this device"))
    with pytest.raises(MissingDataError, match="unsupported on this device.*no kernel for this device"):
        Predictor.load(smol, db, "transformers")


def test_unmeasured_gemm_gets_family_prediction_with_stated_error(tmp_path):
    """A GEMM shape never measured is answered by the GEMM family model, which states
    its error on held-out shapes."""
    from dooly.env import Measurement
    from dooly.fit.stored import family_rows, load_family
    from dooly.unit_models import _gemm_fallback
    env = Environment("cpu0", "cpu", "vllm", "0.32", "CPU_ATTN", "bfloat16")
    with Store.open(str(tmp_path / "g.db")) as s:
        s.add_environment(env)
        for n, k in [(512, 256), (1024, 256), (256, 512), (2048, 512), (768, 768)]:
            u = _gemm(n, k)
            s.add_unit(u)
            for t in (1, 8, 64, 256):
                ms = 0.01 + 2 * t * n * k / 5e10 * 1e3
                s.add_measurement(Measurement(u.key, env.key, {"T": t}, ms, ms, ms, ms, 0.0, 5))
        family = load_family(s, env.key, family_rows(s.units(), s.measurements(), env.key))
    model = _gemm_fallback(family, _gemm(1536, 384))
    assert family.refitted and math.isfinite(model.cv_mape_pct)
    assert model.predict_one({"T": 128}) > 0


@pytest.mark.parametrize("name", ["interp", "isotonic", "poly1", "poly2", "poly3", "constant"])
def test_fast_evaluator_matches_the_fitted_model(name):
    """The predictor's per-unit shortcut gives what the fitted model itself predicts,
    inside and outside the measured range."""
    import numpy as np
    from dooly.fit.estimators import ConstantRegressor
    from dooly.fit.select import candidates, select_model
    from dooly.unit_models import fast_evaluator as _fast
    x = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256], dtype=float)
    y = 0.02 + 3e-4 * x + 2e-7 * x ** 2
    est = dict(candidates("tokens", len(x)), constant=ConstantRegressor())[name]
    model = select_model(x[:, None], y, "tokens", [(name, est)])
    fn = _fast(model, "tokens")
    for t in (1.0, 3.0, 100.0, 256.0, 3000.0):
        assert max(fn(t, {"T": t}), 0.0) == pytest.approx(model.predict_one({"T": t}), rel=1e-9, abs=1e-12)
