"""Which Dooly unit stands for each of Vidur's per-layer ops, from a Predictor's units.

Mapping (vLLM-engine units; one call of the unit, never multiplied by its count, since Vidur's
ops are per layer): GEMMs by shape -- attn_pre_proj: linear [T, d] x [(h+2kv)*hd, d];
attn_post_proj: [T, h*hd] x [d, h*hd]; mlp_up_proj: [T, d] x [2*ff (gated) or ff, d];
mlp_down_proj: [T, ff] x [d, ff]; the LM head (attr role=lm_head) is never one of them.
input_layernorm / post_attention_layernorm <- fused_add_rms_norm (else rms_norm, else any
*norm* unit on [T, d]); add <- 0 when the residual add is fused into that norm; attn_rope <-
rotary_embedding; mlp_act <- the unit turning [T, 2*ff] into [T, ff] (the silu*mul region);
emb <- embedding. attn_prefill <- the attention unit at {"seqs": [[chunk, kv]]}; attn_decode
<- the attention unit at {"seqs": [[1, kv]] * batch}; attn_kv_cache_save <- the KV-cache
update unit at T = chunk (prefill) / batch (decode); attn_input_reshape /
attn_output_reshape <- 0 (views in vLLM). Several candidates: the one run most often.
Any Vidur op with no unit is written as 0 and reported (`VidurExport.sources`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dooly.errors import DoolyInputError


@dataclass
class ModelDims:
    n_head: int
    n_kv_head: int
    n_embd: int
    head_dim: int
    n_expanded_embd: int
    vocab_size: int
    use_gated_mlp: bool = True
    tp: int = 1   # num_tensor_parallel_workers: the units are one rank's shards

    def shard(self) -> tuple[int, int, int]:
        """(query heads, KV heads, MLP width) one rank holds: KV heads are replicated when
        the group is larger than their number, as vLLM does."""
        return (self.n_head // self.tp, max(1, self.n_kv_head // self.tp),
                self.n_expanded_embd // self.tp)


def model_dims(raw: Mapping, path: str = "config") -> ModelDims:
    t = raw.get("text_config") if isinstance(raw.get("text_config"), Mapping) else raw

    def need(*names):
        for n in names:
            v = t.get(n, raw.get(n))
            if isinstance(v, int) and v > 0:
                return v
        raise DoolyInputError(path, "missing or not a positive integer (needed for Vidur's columns)",
                              names[0])
    d = need("hidden_size", "n_embd", "d_model")
    h = need("num_attention_heads", "n_head")
    kv = t.get("num_key_value_heads") or h
    hd = t.get("head_dim") or d // h
    ff = need("intermediate_size", "n_inner", "ffn_dim")
    return ModelDims(h, int(kv), d, int(hd), ff, need("vocab_size"))


@dataclass
class OpSource:
    """Where one Vidur op's numbers come from: a Dooly unit, or 0 with the reason."""
    op: str
    unit_key: str | None = None
    note: str = ""


def _shape(sig) -> list:
    return [str(v) if isinstance(v, str) else int(v) for v in sig.shape()]


def _pick(pred, keys: list[str]) -> str | None:
    if not keys:
        return None
    return sorted(keys, key=lambda k: (-pred.counts.get(k, 0), k))[0]


def _token_unit(u) -> bool:
    return bool(u.inputs) and u.driver == "tokens" and (_shape(u.inputs[0]) or [None])[0] == "T"


def map_units(pred, dims: ModelDims) -> dict[str, OpSource]:
    """Vidur op (mlp and attention) -> OpSource, from a Predictor's units."""
    src: dict[str, OpSource] = {}
    up = _map_gemms(pred, dims, src)
    tok = {k: u for k, u in pred.units.items() if _token_unit(u)}
    _map_token_ops(pred, dims, tok, up, src)
    _map_attention(pred, tok, src)
    for op in ("attn_input_reshape", "attn_output_reshape"):
        src[op] = OpSource(op, None, "a view in vLLM (no kernel), written as 0")
    return src


def _put(src: dict, pred, op: str, keys: list[str], how: str, missing: str) -> None:
    """src[op] from the most frequent of `keys`, or 0 with `missing` as the reason."""
    k = _pick(pred, keys)
    note = how if k else missing
    if k and len(keys) > 1:
        note += f" ({len(keys)} candidates; used the most frequent)"
    src[op] = OpSource(op, k, note)


def _linears(units: Mapping, K: int, N: int) -> list[str]:
    """Token-driven linear units [T, K] x [N, K], the LM head excluded."""
    out = []
    for k, u in units.items():
        if u.op.split(".")[-1] != "linear" and u.op not in ("linear", "aten.linear.default"):
            continue
        if u.attr.get("role") == "lm_head" or len(u.inputs) < 2 or not _token_unit(u):
            continue
        if _shape(u.inputs[0]) == ["T", K] and _shape(u.inputs[1]) == [N, K]:
            out.append(k)
    return out


def _map_gemms(pred, dims: ModelDims, src: dict) -> list[str]:
    """The four GEMMs by shape; sets dims.use_gated_mlp; returns the up-projection keys."""
    (h, kv, ff), units, d, hd = dims.shard(), pred.units, dims.n_embd, dims.head_dim
    _put(src, pred, "attn_pre_proj", _linears(units, d, (h + 2 * kv) * hd),
         "QKV linear", "no QKV linear of this shape; written as 0")
    _put(src, pred, "attn_post_proj", _linears(units, h * hd, d), "o_proj linear",
         "no o_proj linear; written as 0")
    up_gated, up_plain = _linears(units, d, 2 * ff), _linears(units, d, ff)
    dims.use_gated_mlp = bool(up_gated) or not up_plain
    _put(src, pred, "mlp_up_proj", up_gated or up_plain, "gate_up linear" if up_gated else "up linear",
         "no up/gate_up linear; written as 0")
    _put(src, pred, "mlp_down_proj", _linears(units, ff, d), "down linear",
         "no down linear; written as 0")
    return up_gated + up_plain


def _map_token_ops(pred, dims: ModelDims, tok: dict, up: list[str], src: dict) -> None:
    """Embedding, norms, residual add, rope and the MLP activation."""
    d, ff = dims.n_embd, dims.shard()[2]
    emb = [k for k, u in tok.items() if u.op.split(".")[-1] == "embedding" or u.op == "embedding"]
    _put(src, pred, "emb", emb, "embedding", "no embedding unit; written as 0")
    on_hidden = {k: u for k, u in tok.items() if _shape(u.inputs[0]) == ["T", d]}
    fused_norm = [k for k, u in on_hidden.items() if "fused_add_rms_norm" in u.op]
    plain_norm = [k for k, u in on_hidden.items() if "norm" in u.op and k not in fused_norm]
    norms = fused_norm or plain_norm
    how = "fused_add_rms_norm (per call)" if fused_norm else "norm (per call)"
    _put(src, pred, "input_layernorm", norms, how, "no norm unit; written as 0")
    _put(src, pred, "post_attention_layernorm", norms, how, "no norm unit; written as 0")
    if fused_norm:
        src["add"] = OpSource("add", None, "fused into fused_add_rms_norm, written as 0")
    else:
        adds = [k for k, u in on_hidden.items() if u.op.split(".")[-1] in ("add", "add.Tensor")
                or u.op == "aten.add.Tensor"]
        _put(src, pred, "add", adds, "residual add", "no residual add unit; written as 0")
    rope = [k for k, u in tok.items() if "rotary" in u.op or "rope" in u.op]
    _put(src, pred, "attn_rope", rope, "rotary_embedding", "no rotary-embedding unit; written as 0")
    up_n = 2 * ff if dims.use_gated_mlp else ff
    act = [k for k, u in tok.items() if k not in up and u.outputs
           and _shape(u.inputs[0]) == ["T", up_n] and _shape(u.outputs[0]) == ["T", ff]]
    _put(src, pred, "mlp_act", act, "silu*mul region" if dims.use_gated_mlp else "activation",
         "no activation unit; written as 0")


def _map_attention(pred, tok: dict, src: dict) -> None:
    """Attention (full-attention layers first) and the KV-cache write of the same layer type."""
    units = pred.units
    attn = {k: u for k, u in units.items() if u.driver == "attention" and "attention" in u.op
            and "kv_cache" not in u.op}
    full = [k for k, u in attn.items() if not u.attr.get("sliding_window")]
    attn_keys = full or list(attn)
    _put(src, pred, "attn_prefill", attn_keys, "attention unit at [[chunk, kv]]",
         "no attention unit; written as 0")
    _put(src, pred, "attn_decode", attn_keys, "attention unit at [[1, kv]] * batch",
         "no attention unit; written as 0")
    kvu = [k for k, u in tok.items() if "kv_cache_update" in u.op or "reshape_and_cache" in u.op]
    akey = src["attn_decode"].unit_key
    if akey and kvu:  # the KV write of the same layer type as the attention unit
        same = [k for k in kvu if units[k].attr.get("layer_type") == units[akey].attr.get("layer_type")]
        kvu = same or kvu
    _put(src, pred, "attn_kv_cache_save", kvu, "KV-cache update at T = chunk / batch",
         "no separate KV-cache write (inside the attention op?); written as 0")
