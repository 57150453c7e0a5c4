"""Published configs that once stopped a run: OLMo-2 (vLLM runs it through its
Transformers modeling backend, whose norm weights left the meta device), InternLM2 (a
type only its repository's code defines) and Gemma-3 (a hybrid sliding-window layer
pattern: five 512-token windowed layers, then one full)."""
import pytest

from conftest import config, needs_vllm
from dooly.analyze import analyze
from dooly.config import load_config

OLMO2 = config("allenai__OLMo-2-1124-7B")
GEMMA3 = config("google__gemma-3-1b-it")
INTERNLM2 = config("internlm__internlm2_5-7b-chat")


def _attention(inv, prefix: str) -> dict[str, tuple[int, int]]:
    """layer type -> (count, sliding window) of the model's attention units."""
    return {e.unit.attr["layer_type"]: (e.count, e.unit.attr["sliding_window"])
            for e in inv.entries.values() if e.unit.op.startswith(prefix)}


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
