import json
import os
import subprocess
import sys

import pytest

from conftest import config, needs_vllm
from dooly.analyze import analyze
from dooly.config import ModelConfig, load_config
from dooly.graph.regions import RegionRegistry
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import TensorSig, Unit


def _sig(*dims, dtype="bfloat16"):
    return TensorSig(tuple(DimLabel(d, Label.REQUEST) if isinstance(d, str)
                           else DimLabel(d, Label.CONFIG) for d in dims), dtype)


def _gemm(n, k, dtype="bfloat16"):
    return Unit("linear", (_sig("T", k, dtype=dtype), _sig(n, k, dtype=dtype)),
                (_sig("T", n, dtype=dtype),))


def test_gemm_key_is_the_same_in_another_process():
    # keys are content hashes, never Python's per-process salted hash()
    code = ("from dooly.symbolic.labels import DimLabel as D, Label as L; "
            "from dooly.unit import TensorSig as S, Unit; "
            "t, c = D('T', L.REQUEST), lambda v: D(v, L.CONFIG); "
            "print(Unit('linear', (S((t, c(4096)), 'bfloat16'), S((c(6144), c(4096)), 'bfloat16')), "
            "(S((t, c(6144)), 'bfloat16'),)).key)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == _gemm(6144, 4096).key


def test_different_shape_or_dtype_gets_different_key():
    keys = {_gemm(6144, 4096).key, _gemm(4096, 4096).key, _gemm(6144, 4096, "float16").key}
    assert len(keys) == 3


def test_unit_json_round_trip_keeps_key():
    u = _gemm(6144, 4096)
    assert Unit.from_json(json.loads(json.dumps(u.to_json()))).key == u.key


def _region(ops):
    nodes = [{"op": op, "args": [{"in": 0} if i == 0 else {"ref": i - 1}], "kwargs": {}}
             for i, op in enumerate(ops)]
    return {"nodes": nodes, "outputs": [len(ops) - 1]}, [_sig("T", 64).to_json()]


def test_isomorphic_regions_share_a_key_and_others_do_not():
    reg = RegionRegistry()
    a = reg.key(*_region(["silu", "mul"]))
    assert reg.key(*_region(["silu", "mul"])) == a
    assert reg.key(*_region(["gelu", "mul"])) != a
    assert RegionRegistry().key(*_region(["silu", "mul"])) == a  # no state: any registry


def test_identical_ops_in_two_models_share_keys():
    an = analyze([config("meta-llama__Llama-3.1-8B"), config("mistralai__Mistral-7B-v0.1")],
                 "transformers")
    llama, mistral = an.inventories
    shared = set(llama.entries) & set(mistral.entries)
    ops = {llama.entries[k].unit.op for k in shared}
    assert "linear" in ops and "scaled_dot_product_attention" not in ops  # Mistral: window
    head = [k for k, e in llama.entries.items()
            if e.unit.op == "linear" and e.unit.inputs[1].shape()[0] == 128256]
    assert head and head[0] not in mistral.entries  # the LM head's vocab differs
    emb = [k for k, e in llama.entries.items() if e.unit.op == "embedding"]
    assert emb and emb[0] in mistral.entries  # a gather's table length is not in its key


def _with_layers(name, layers):
    cfg = load_config(config(name))
    raw = dict(cfg.raw, num_hidden_layers=layers)
    if isinstance(raw.get("layer_types"), list):
        raw["layer_types"] = raw["layer_types"][:layers]
    return ModelConfig(cfg.path, raw, cfg.architecture, cfg.model_type)


@pytest.mark.parametrize("name,layers", [
    ("meta-llama__Llama-3.1-8B", 5),
    pytest.param("google__gemma-2-9b", 8, marks=pytest.mark.slow),  # ~20 s each
    pytest.param("huihui-ai__c4ai-command-r7b-12-2024-abliterated", 12, marks=pytest.mark.slow)])
def test_one_period_times_counts_equals_full_depth(name, layers):
    from dooly.analyze import analyze_config
    from dooly.engines import hf_capture as capture_hf
    cfg = _with_layers(name, layers)
    traced = analyze_config(cfg, "transformers", RegionRegistry()).counts()
    real = capture_hf.capture_hf
    try:  # full depth: every layer traced once
        capture_hf.capture_hf = lambda c, layers=None, **kw: real(c, c.num_layers, **kw)
        full = analyze_config(cfg, "transformers", RegionRegistry()).counts()
    finally:
        capture_hf.capture_hf = real
    assert traced == full
    assert cfg.traced_layers() < layers


@needs_vllm
def test_vllm_one_period_equals_full_depth_for_gemma2():
    from dooly.analyze import analyze_config
    from dooly.engines import vllm_capture as capture_vllm
    cfg = _with_layers("google__gemma-2-9b", 6)
    traced = analyze_config(cfg, "vllm", RegionRegistry()).counts()
    real = capture_vllm.capture_vllm
    try:
        capture_vllm.capture_vllm = lambda c, layers=None: real(c, c.num_layers)
        full = analyze_config(cfg, "vllm", RegionRegistry()).counts()
    finally:
        capture_vllm.capture_vllm = real
    assert traced == full


@needs_vllm
def test_vllm_llama_shows_the_units_vllm_runs():
    inv = analyze([config("meta-llama__Llama-3.1-8B")], "vllm").inventories[0]
    gemms = {tuple(tuple(t.shape()) for t in e.unit.inputs[:2]): e.count
             for e in inv.entries.values() if e.unit.op == "linear"}
    assert gemms[(("T", 4096), (6144, 4096))] == 32      # QKV
    assert gemms[(("T", 4096), (4096, 4096))] == 32      # o_proj
    assert gemms[(("T", 4096), (28672, 4096))] == 32     # gate_up
    assert gemms[(("T", 14336), (4096, 14336))] == 32    # down
    assert gemms[(("B", 4096), (128256, 4096))] == 1     # LM head, last token per sequence
    attn = [e.unit for e in inv.entries.values() if e.unit.op == "vllm.unified_attention_with_output"]
    assert len(attn) == 1 and attn[0].stateful
    a = attn[0].attr
    assert (a["num_heads"], a["num_kv_heads"], a["head_size"]) == (32, 8, 128)


def test_constant_dims_name_their_config_fields():
    inv = analyze([config("meta-llama__Llama-3.1-8B")], "transformers").inventories[0]
    fields = {}
    for e in inv.entries.values():
        for t in e.unit.inputs:
            for d in t.dims:
                if d.label.value == "CONFIG" and d.config_fields:
                    fields.setdefault(d.value_or_expr, set()).add(d.config_fields)
    assert ("hidden_size",) in fields[4096]
    assert ("intermediate_size",) in fields[14336]
    assert ("vocab_size",) in fields[128256]
    assert ("head_dim", "num_key_value_heads") in fields[1024]


def test_field_matcher_reads_fused_qkv_width():
    from dooly.symbolic.perturb import FACTORS, FieldMatcher
    raw = json.loads(open(config("meta-llama__Llama-3.1-8B")).read())
    m = FieldMatcher(raw)
    h, kv, d = 32 * FACTORS["num_attention_heads"], 8 * FACTORS["num_key_value_heads"], 128 * FACTORS["head_dim"]
    assert m.fields(6144, (h + 2 * kv) * d) == ("head_dim", "num_attention_heads", "num_key_value_heads")
    assert m.fields(4096, 4096 * FACTORS["hidden_size"]) == ("hidden_size",)
