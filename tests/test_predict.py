import json

import pytest

from conftest import config
from dooly.batchspec import parse_batch
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
