"""Published configs that once stopped a run: OLMo-2 (vLLM runs it through its
Transformers modeling backend, whose norm weights left the meta device), InternLM2 (a
type only its repository's code defines) and Gemma-3 (a hybrid sliding-window layer
pattern: five 512-token windowed layers, then one full), and Phi-3.5 (LongRoPE: a
factor list per rotary frequency, which the perturbed capture must resize)."""
import pytest

from conftest import config, needs_vllm
from dooly.analyze import analyze
from dooly.config import load_config

OLMO2 = config("allenai__OLMo-2-1124-7B")
GEMMA3 = config("google__gemma-3-1b-it")
INTERNLM2 = config("internlm__internlm2_5-7b-chat")
PHI35 = config("microsoft__Phi-3.5-mini-instruct")


def _attention(inv, prefix: str) -> dict[str, tuple[int, int]]:
    """layer type -> (count, sliding window) of the model's attention units."""
    return {e.unit.attr["layer_type"]: (e.count, e.unit.attr["sliding_window"])
            for e in inv.entries.values() if e.unit.op.startswith(prefix)}


def _unrunnable_regions(inv) -> list[str]:
    """Fused regions the sweep could not rebuild from their stored data: such a unit is never
    measured, and its model can never be predicted."""
    from dooly.profile.runners import region_fn
    bad = []
    for e in inv.entries.values():
        if e.unit.op == "fused":
            try:
                region_fn(e.unit)
            except ValueError as err:
                bad.append(str(err))
    return bad


def _count(inv, op: str) -> int:
    return sum(e.count for e in inv.entries.values() if e.unit.op == op)


def test_gemma3_layer_pattern():
    cfg = load_config(GEMMA3)
    types = cfg.layer_types()
    assert types.count("full_attention") == 4 and types.count("sliding_attention") == 22
    assert [i for i, t in enumerate(types) if t == "full_attention"] == [5, 11, 17, 23]
    assert cfg.period() == 6 and cfg.traced_layers() == 12
    assert sum(cfg.traced_multiplicity().values()) == 26
    assert cfg.sliding_window("sliding_attention") == 512


def test_longrope_lists_grow_with_the_perturbed_heads_and_no_head_dim_is_added():
    from dooly.symbolic.perturb import perturbed
    raw = load_config(PHI35).raw    # hidden 3072, 32 heads, no head_dim: 48 factors
    out = perturbed(raw)
    head = out["hidden_size"] // out["num_attention_heads"]
    assert "head_dim" not in out and head == 5 * 96
    for name in ("short_factor", "long_factor"):
        assert len(raw["rope_scaling"][name]) == 48 and len(out["rope_scaling"][name]) == head // 2
    plain = perturbed(load_config(config("HuggingFaceTB__SmolLM2-135M-Instruct")).raw)
    assert plain["head_dim"] == 2 * 64    # other configs perturb head_dim as before


@needs_vllm
def test_a_longrope_model_names_its_config_fields():
    inv = analyze([PHI35], "vllm", use_cache=False).inventories[0]
    assert not any("config fields unknown" in n for n in inv.notes), inv.notes
    assert _unrunnable_regions(inv) == []   # its LongRoPE region repeats a tensor


@needs_vllm
def test_a_config_vllm_cannot_parse_is_refused_without_waiting_for_a_retry(tmp_path, monkeypatch):
    import json

    from vllm.transformers_utils import repo_utils

    from dooly.engines.vllm_capture import _vllm_config
    from dooly.errors import DoolyInputError
    raw = load_config(PHI35).raw
    raw["rope_scaling"] = {**raw["rope_scaling"], "short_factor": [1.0] * 5}
    path = tmp_path / "phi.json"
    path.write_text(json.dumps(raw))
    waits = []
    monkeypatch.setattr(repo_utils.time, "sleep", waits.append)
    with pytest.raises(DoolyInputError):
        _vllm_config(load_config(path), 1)
    assert waits == []


@needs_vllm
@pytest.mark.slow
def test_vllm_analyses_olmo2_gemma3_internlm2():
    # in this process: a capture leaves no Dynamo hook behind for later sweeps to trip over
    # (tests/test_export_vidur.py sweeps after it; dooly.engines.vllm_compat.dynamo_hooks_removed)
    from torch._dynamo import convert_frame
    hooks = set(convert_frame._bytecode_hooks)
    a = analyze([OLMO2, GEMMA3, INTERNLM2], "vllm")
    assert set(convert_frame._bytecode_hooks) == hooks
    assert not a.failed, a.failed
    olmo, gemma, intern = a.inventories
    for inv in a.inventories:  # the perturbed capture worked too: dims name their fields
        assert not any("config fields unknown" in n for n in inv.notes), inv.notes
        assert _unrunnable_regions(inv) == [], inv.model   # OLMo-2's cos, Gemma-3's unflatten
    att = "vllm.unified_attention"
    assert _attention(olmo, att) == {"full_attention": (32, 0)}
    # q_norm, k_norm, post-attention and post-feedforward norms per layer, plus the final norm
    assert _count(olmo, "vllm_ir.rms_norm") == 4 * 32 + 1
    assert _attention(gemma, att) == {"sliding_attention": (22, 512), "full_attention": (4, 0)}
    assert _attention(intern, att) == {"full_attention": (32, 0)}
    kv = [e.unit.attr["num_kv_heads"] for e in intern.entries.values() if e.unit.op.startswith(att)]
    assert kv == [8]


@pytest.mark.slow
def test_transformers_analyses_olmo2_and_gemma3():
    a = analyze([OLMO2, GEMMA3], "transformers", fields=False)
    assert not a.failed, a.failed
    olmo, gemma = a.inventories
    sdpa = "scaled_dot_product_attention"
    assert _attention(olmo, sdpa) == {"full_attention": (32, 0)}
    assert _attention(gemma, sdpa) == {"sliding_attention": (22, 512), "full_attention": (4, 0)}


def test_transformers_names_the_config_fields_of_every_gemm_dim():
    # gemma-2's fields were once all lost: its perturbed graph has extra view ops (repeating
    # KV heads for attention), 416 nodes against 393, and only equal op sequences were paired
    inv = analyze([config("google__gemma-2-2b")], "transformers", use_cache=False).inventories[0]
    gemms = [e.unit for e in inv.entries.values() if e.unit.op == "linear"]
    assert gemms
    for unit in gemms:
        for sig in unit.inputs:
            # (the LM head's 1 is logits_to_keep, no config field)
            assert all(d.config_fields for d in sig.dims
                       if d.label.value == "CONFIG" and d.value_or_expr > 1), unit
