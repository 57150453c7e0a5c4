"""dooly.interop.vidur_import: importing Vidur's mlp.csv profiles and writing Vidur-format CSVs."""
import csv
import shutil
from pathlib import Path

import pytest

from dooly.errors import DoolyInputError
from dooly.fit import fit_units, gemm_shape, rows_from_units
from dooly.graph.family import family_key
from dooly.interop.vidur_format import VIDUR_MLP_OPS, attention_header, mlp_header, write_vidur_csv
from dooly.interop.vidur_import import import_vidur, read_vidur_mlp, vidur_units

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "vidur" / "a100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"
LLAMA2_7B = {"n_head": 32, "n_kv_head": 32, "n_embd": 4096, "n_expanded_embd": 11008,
             "vocab_size": 32768, "use_gated_mlp": "True"}


def _rows():
    with open(FIXTURE, newline="") as f:
        return list(csv.DictReader(f))


def _copy_without(tmp_path, drop: set[str]) -> Path:
    out = tmp_path / "a100" / "org" / "model" / "mlp.csv"
    header = [c for c in mlp_header() if c not in drop]
    write_vidur_csv(out, header, [{k: v for k, v in r.items() if k in header} for r in _rows()])
    return out


def test_fixture_keeps_license_and_header():
    assert (FIXTURE.parents[3] / "LICENSE").read_text().lstrip().startswith("MIT License")
    with open(FIXTURE, newline="") as f:
        assert next(csv.reader(f)) == mlp_header()


def test_import_fixture_units_and_shapes():
    env, units, ms = read_vidur_mlp(FIXTURE)
    assert (env.device_name, env.device_kind, env.engine, env.engine_version, env.backend, env.dtype,
            env.execution) == ("NVIDIA A100", "cuda", "vidur-sarathi", "vidur", "n/a", "float16", "imported")
    assert len(units) == 10 and len({u.key for u in units}) == 10
    by_op = vidur_units(LLAMA2_7B)
    assert {u.key for u in units} == {u.key for u in by_op.values()}
    shapes = {op: [t.shape() for t in by_op[op].inputs] for op in VIDUR_MLP_OPS}
    assert shapes["attn_pre_proj"] == [["T", 4096], [12288, 4096]]
    assert shapes["attn_post_proj"] == [["T", 4096], [4096, 4096]]
    assert shapes["mlp_up_proj"] == [["T", 4096], [22016, 4096]]
    assert shapes["mlp_down_proj"] == [["T", 11008], [4096, 11008]]
    assert shapes["input_layernorm"] == [["T", 4096], [4096]]
    assert [t.shape() for t in by_op["mlp_act"].outputs] == [["T", 11008]]
    assert {by_op[op].op for op in ("attn_pre_proj", "mlp_down_proj")} == {"linear"}
    assert by_op["add"].op == "vidur.add" and all(u.driver == "tokens" for u in units)
    assert all(t.dtype == "float16" for t in by_op["mlp_up_proj"].inputs)
    assert gemm_shape(by_op["mlp_up_proj"]) == ("T", 4096, 22016)
    dims = by_op["attn_pre_proj"].inputs[0].dims
    assert dims[0].label.value == "REQUEST" and dims[1].label.value == "CONFIG"


def test_import_fixture_measurements():
    env, units, ms = read_vidur_mlp(FIXTURE)
    tp1 = [r for r in _rows() if r["num_tensor_parallel_workers"] == "1"]
    assert len(ms) == len(tp1) * 10
    assert all(m.env_key == env.key and m.samples == 0 and set(m.point) == {"T"} for m in ms)
    first = tp1[0]
    key = vidur_units(LLAMA2_7B)["mlp_up_proj"].key
    m = next(m for m in ms if m.unit_key == key and m.point == {"T": int(first["num_tokens"])})
    assert m.median_ms == float(first["time_stats.mlp_up_proj.median"])
    assert m.mean_ms == float(first["time_stats.mlp_up_proj.mean"])
    assert m.std_ms == float(first["time_stats.mlp_up_proj.std"])
    assert m.p10_ms == float(first["time_stats.mlp_up_proj.min"])
    assert m.p90_ms == float(first["time_stats.mlp_up_proj.max"])
    # tensor parallel rows on request, with divided shapes
    _, units2, ms2 = read_vidur_mlp(FIXTURE, tp=2)
    assert len(ms2) == 4 * 10
    assert [t.shape() for t in vidur_units(LLAMA2_7B, tp=2)["attn_post_proj"].inputs] == [["T", 2048], [4096, 2048]]
    assert {u.key for u in units2} == {u.key for u in vidur_units(LLAMA2_7B, tp=2).values()}


def test_imported_fixture_fits_and_feeds_gemm_rows():
    env, units, ms = read_vidur_mlp(FIXTURE)
    fits = fit_units(units, ms)
    assert len(fits) == 10 and all(f.cv_mape_pct is not None for f in fits.values())
    rows = rows_from_units(units, ms, [env])
    assert len(rows) == 4 * 16 and {r.device for r in rows} == {"NVIDIA A100"}
    assert {r.shape for r in rows} == {(4096, 12288), (4096, 4096), (4096, 22016), (11008, 4096)}


def test_missing_column_names_it(tmp_path):
    path = _copy_without(tmp_path, {"time_stats.attn_rope.std"})
    with pytest.raises(DoolyInputError) as e:
        read_vidur_mlp(path)
    assert e.value.field == "time_stats.attn_rope.std" and "missing column" in str(e.value)
    assert str(path) in str(e.value)
    path = _copy_without(tmp_path, {"num_tokens"})
    with pytest.raises(DoolyInputError, match="num_tokens"):
        read_vidur_mlp(path)


def test_op_absent_from_model_is_skipped(tmp_path):
    # phi-2's mlp.csv has no post_attention_layernorm columns at all
    drop = {f"time_stats.post_attention_layernorm.{s}" for s in ("min", "max", "mean", "median", "std")}
    env, units, ms = read_vidur_mlp(_copy_without(tmp_path, drop))
    assert len(units) == 9 and "vidur.post_attention_layernorm" not in {u.op for u in units}


def test_a_parallel_block_times_a_three_way_add_and_its_own_norm_apart_from_the_rest(tmp_path):
    # Vidur's GPT block without a post-attention norm adds attention, MLP and residual in
    # one timed `add` (two kernels), and its norm may be a LayerNorm
    drop = {f"time_stats.post_attention_layernorm.{s}" for s in ("min", "max", "mean", "median", "std")}
    _, units, _ = read_vidur_mlp(_copy_without(tmp_path, drop))
    _, full, _ = read_vidur_mlp(FIXTURE)
    by_op = {u.op: u for u in units}
    add = by_op["vidur.add"]
    assert len(add.inputs) == 3 and add.attr.get("parallel_block") is True
    assert by_op["vidur.input_layernorm"].attr.get("parallel_block") is True
    assert family_key(add) != family_key({u.op: u for u in full}["vidur.add"])
    # a gated model keeps its keys; an ungated MLP's activation is a GELU, not SiLU-and-mul
    assert {u.key for u in full} == {u.key for u in vidur_units(dict(_rows()[0])).values()} \
        == {u.key for u in vidur_units(LLAMA2_7B).values()}
    gelu = vidur_units(dict(LLAMA2_7B, use_gated_mlp="False"))["mlp_act"]
    assert gelu.attr.get("act") == "gelu"
    assert family_key(gelu) != family_key(vidur_units(LLAMA2_7B)["mlp_act"])


def test_bad_value_and_unknown_device(tmp_path):
    rows = _rows()
    rows[2]["time_stats.add.median"] = "fast"
    bad = write_vidur_csv(tmp_path / "a40" / "o" / "m" / "mlp.csv", mlp_header(), rows)
    with pytest.raises(DoolyInputError) as e:
        read_vidur_mlp(bad)
    assert e.value.field == "time_stats.add.median" and "line 4" in str(e.value)
    nowhere = tmp_path / "x" / "mlp.csv"
    nowhere.parent.mkdir()
    shutil.copy(FIXTURE, nowhere)
    with pytest.raises(DoolyInputError, match="device"):
        read_vidur_mlp(nowhere)
    assert read_vidur_mlp(nowhere, device_name="NVIDIA H100")[0].device_name == "NVIDIA H100"
    empty = tmp_path / "a100" / "empty" / "mlp.csv"
    empty.parent.mkdir(parents=True)
    empty.write_text("")
    with pytest.raises(DoolyInputError, match="header"):
        read_vidur_mlp(empty)


def test_headers_and_writer(tmp_path):
    h = mlp_header()
    assert len(h) == 10 * 5 + 8 and h[:2] == ["time_stats.emb.min", "time_stats.emb.max"]
    assert h[-2:] == ["num_tokens", "num_tensor_parallel_workers"]
    a = attention_header()
    assert len(a) == 5 * 5 + 11 and a[0] == "time_stats.attn_input_reshape.min"
    assert "time_stats.attn_kv_cache_save.std" in a and a[-1] == "attention_backend"
    p = write_vidur_csv(tmp_path / "att" / "attention.csv", a, [{"n_embd": 4096, "is_prefill": True}, [0] * len(a)])
    with open(p, newline="") as f:
        got = list(csv.DictReader(f))
    assert got[0]["n_embd"] == "4096" and got[0]["is_prefill"] == "True" and got[0]["batch_size"] == ""
    with pytest.raises(ValueError, match="columns not in the header"):
        write_vidur_csv(tmp_path / "x.csv", a, [{"nope": 1}])
    with pytest.raises(ValueError, match="values for"):
        write_vidur_csv(tmp_path / "x.csv", a, [[1, 2]])


def test_import_vidur_into_a_store_like(tmp_path):
    class FakeStore:
        def __init__(self):
            self.envs, self.units, self.meas = [], [], []

        def add_environment(self, env):
            self.envs.append(env)

        def add_unit(self, unit):
            self.units.append(unit)

        def add_measurement(self, m):
            self.meas.append(m)

    root = tmp_path / "a100"
    for model in ("a/one", "b/two"):
        dst = root / model / "mlp.csv"
        dst.parent.mkdir(parents=True)
        shutil.copy(FIXTURE, dst)
    st = FakeStore()
    counts = import_vidur(tmp_path, st)
    # same config twice: one environment, shared units, both files' measurements
    assert counts == {"files": 2, "environments": 1, "units": 10, "measurements": 320}
    assert len(st.envs) == 1 and len(st.units) == 10 and len(st.meas) == 320
    with pytest.raises(DoolyInputError, match="no mlp.csv"):
        import_vidur(tmp_path / "empty", st)
