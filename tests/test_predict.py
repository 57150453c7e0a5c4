import json

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
        parse_batch(str(p))


def test_unit_without_data_is_a_clear_error(tmp_path):
    from dooly.predict import Predictor
    db = str(tmp_path / "e.db")
    env = Environment("cpu0", "cpu", "transformers", "5", "sdpa", "bfloat16")
    with Store.open(db) as s:
        s.add_environment(env)
    with pytest.raises(MissingDataError) as err:
        Predictor.load(config("HuggingFaceTB__SmolLM2-135M-Instruct"), db, "transformers")
    assert "no measurements for unit" in str(err.value) and env.label() in str(err.value)


def test_unmeasured_gemm_gets_family_prediction_with_stated_error(tmp_path):
    """A GEMM shape never measured is answered by the GEMM family model, which states
    its error on held-out shapes."""
    from dooly.env import Measurement
    from dooly.predict import _gemm_fallback
    from dooly.symbolic.labels import DimLabel, Label
    from dooly.unit import TensorSig, Unit

    def gemm(n, k):
        sig = lambda *d: TensorSig(tuple(DimLabel(x, Label.REQUEST) if isinstance(x, str)  # noqa: E731
                                         else DimLabel(x, Label.CONFIG) for x in d), "bfloat16")
        return Unit("linear", (sig("T", k), sig(n, k)), (sig("T", n),))
    env = Environment("cpu0", "cpu", "vllm", "0.32", "CPU_ATTN", "bfloat16")
    with Store.open(str(tmp_path / "g.db")) as s:
        s.add_environment(env)
        for n, k in [(512, 256), (1024, 256), (256, 512), (2048, 512), (768, 768)]:
            u = gemm(n, k)
            s.add_unit(u)
            for t in (1, 8, 64, 256):
                ms = 0.01 + 2 * t * n * k / 5e10 * 1e3
                s.add_measurement(Measurement(u.key, env.key, {"T": t}, ms, ms, ms, ms, 0.0, 5))
        model = _gemm_fallback(s, env, gemm(1536, 384))
    assert model is not None and model.cv_mape_pct == model.cv_mape_pct  # a number, not NaN
    assert model.predict_one({"T": 128}) > 0
