"""Multi-head latent attention (DeepSeek-V2 style): a unit of its own kind, timed through
vLLM's own MLA layer and backend, with a one-latent KV cache."""
import pytest
import torch

from dooly.fit.step_features import model_structure
from dooly.parallel import kv_bytes_per_token
from dooly.unit import DimLabel, Label, TensorSig, Unit, is_mla

MLA = {"num_heads": 16, "num_kv_heads": 1, "head_size": 576, "kv_lora_rank": 512,
       "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}


def _t(*dims, dtype="bfloat16"):
    return TensorSig(tuple(DimLabel(d, Label.REQUEST if isinstance(d, str) else Label.CONFIG, ())
                           for d in dims), dtype)


def _mla_unit(op="vllm.unified_mla_attention_with_output"):
    return Unit(op=op, inputs=(_t("T", 16, 192), _t("T", 512), _t("T", 1, 64)), outputs=(),
                attrs=tuple(sorted(MLA.items())), stateful=True)


def test_mla_units_are_attention_driven_and_say_so():
    u = _mla_unit()
    assert is_mla(u.attr) and u.driver == "attention"
    assert _mla_unit("vllm.unified_mla_kv_cache_update").driver == "tokens"
    assert not is_mla({"num_heads": 16, "num_kv_heads": 8, "head_size": 128})


def test_mla_cache_holds_one_latent_per_token_and_layer():
    u = _mla_unit()
    # 27 layers x (512 latent + 64 rope) x 2 bytes; standard attention would store K and V
    assert kv_bytes_per_token({u.key: u}, {u.key: 27}) == 27 * 576 * 2


def test_mla_query_width_is_nope_plus_rope():
    u = _mla_unit()
    s = model_structure(None, {u.key: 27}, {u.key: u})
    assert s["kv_width"] == 576 and s["q_width"] == 16 * 192 and s["attention_full"] == 27


@pytest.mark.vllm
def test_mla_runner_matches_latent_attention_reference():
    pytest.importorskip("vllm")
    from dooly.engines import attention_runner
    # DeepSeek's latent shapes (vLLM's MLA kernels take a 576-wide cache head), 4 heads
    r = attention_runner("vllm", num_heads=4, kv_lora_rank=512, qk_nope_head_dim=128,
                         qk_rope_head_dim=64, v_head_dim=128, max_context=512, max_batch=8)
    assert "MLA" in r.backend_name and tuple(r.kv_cache.shape[2:]) == (512 + 64,)

    def reference(q, kv_c, k_pe, context):   # q at positions context.., causal, no absorption
        kv = (kv_c.float() @ r.kv_b_weight.float().T).view(kv_c.shape[0], 4, 256)
        k = torch.cat([kv[..., :128], k_pe.float().expand(-1, 4, -1)], -1)
        scores = torch.einsum("qhd,khd->hqk", q.float(), k) * 192 ** -0.5
        mask = torch.arange(kv_c.shape[0])[None] <= torch.arange(context, kv_c.shape[0])[:, None]
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.einsum("hqk,khd->qhd", probs, kv[..., 128:]).reshape(q.shape[0], -1)

    pre = r.prepare([(100, 0)])
    out = pre().float()
    b = pre.batch
    assert out.shape == (100, 4 * 128)
    assert (out - reference(b["q"], b["k"], b["v"], 0)).abs().max() < 0.05
    dec = r.prepare([(1, 100)])   # a decode over what the prefill wrote (same seeded blocks)
    out = dec().float()
    kv_c = torch.cat([b["k"], dec.batch["k"]])
    k_pe = torch.cat([b["v"], dec.batch["v"]])
    assert (out - reference(dec.batch["q"], kv_c, k_pe, 100)).abs().max() < 0.05
    mixed = r.prepare_parts([(1, 60), (1, 30), (24, 0)])
    assert torch.isfinite(mixed["step"]().float()).all()


@pytest.mark.vllm
@pytest.mark.slow
def test_deepseek_v2_lite_analyses_with_latent_attention_and_its_moe():
    pytest.importorskip("vllm")
    from conftest import config
    from dooly.analyze import analyze
    a = analyze([config("deepseek-ai__DeepSeek-V2-Lite-Chat")], "vllm", fields=False)
    assert not a.failed, a.failed
    (inv,) = a.inventories
    by_op = {}
    for e in inv.entries.values():
        by_op.setdefault(e.unit.op, []).append(e)
    (att,) = by_op["vllm.unified_mla_attention_with_output"]
    (kv,) = by_op["vllm.unified_mla_kv_cache_update"]
    assert att.count == kv.count == 27 and att.unit.driver == "attention"
    assert {k: att.unit.attr[k] for k in MLA} == MLA
    assert sum(e.count for e in by_op["_C.cpu_fused_moe"]) == 26   # first_k_dense_replace = 1
    units = {k: e.unit for k, e in inv.entries.items()}
    assert kv_bytes_per_token(units, inv.counts()) == 27 * 576 * 2
