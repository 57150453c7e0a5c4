"""Which config fields a constant dim comes from, told by a second, perturbed capture.

Each size field is multiplied by its own factor (the factors keep the config valid:
heads stay divisible by KV heads, hidden by heads). A constant dim then matches the
candidate config expression whose value equals it in both captures. Engines' model
code turns many fields into plain ints (vLLM everywhere, transformers for head_dim and
expert counts), so this is how their dims still name their fields."""
from __future__ import annotations

import itertools

import sympy

from dooly.symbolic.symbols import SymKind, config_field, make_symbol

FACTORS = {"hidden_size": 45, "intermediate_size": 7, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 2, "vocab_size": 11,
           "max_position_embeddings": 13, "num_local_experts": 17, "num_experts": 17,
           "moe_intermediate_size": 19}


_ROPE_LISTS = ("short_factor", "long_factor")


def _sym(field: str) -> sympy.Symbol:
    return make_symbol(SymKind.CONFIG, field)


def field_values(raw: dict) -> dict[str, int]:
    vals = {f: int(raw[f]) for f in FACTORS if isinstance(raw.get(f), int) and raw[f] > 0}
    if "head_dim" not in vals and "hidden_size" in vals and "num_attention_heads" in vals:
        vals["head_dim"] = vals["hidden_size"] // vals["num_attention_heads"]
    if "num_key_value_heads" not in vals and "num_attention_heads" in vals:
        vals["num_key_value_heads"] = vals["num_attention_heads"]
    return vals


def perturbed(raw: dict) -> dict:
    """A copy of the config with every size field scaled by its factor."""
    out = dict(raw)
    vals = field_values(raw)
    for f, v in vals.items():
        out[f] = v * FACTORS[f]
    if out.get("layer_types") is None and "num_key_value_heads" not in raw:
        out["num_key_value_heads"] = vals.get("num_key_value_heads", 1) * FACTORS["num_key_value_heads"]
    _rope_factors_resized(out, raw)
    return out


def _rope_factors_resized(out: dict, raw: dict) -> None:
    """LongRoPE lists one factor per rotary frequency (half a head's rotary dims), and
    the engines refuse lists that do not fit the heads: the perturbed config's lists
    grow with its head size. Where the config gives no head_dim, vLLM checks the lists
    against hidden_size / num_attention_heads but builds the rotary cache from a
    head_dim when there is one, so the perturbed config gains none either (its head
    dims are then named by that quotient). The factors' values shape nothing."""
    ropes = [k for k in ("rope_scaling", "rope_parameters") if isinstance(out.get(k), dict)
             and any(isinstance(out[k].get(n), list) and out[k][n] for n in _ROPE_LISTS)]
    if not ropes:
        return
    given = isinstance(raw.get("head_dim"), int)
    if not given:
        out.pop("head_dim", None)

    def head(c: dict) -> int:
        return c["head_dim"] if given else c.get("hidden_size", 0) // max(c.get("num_attention_heads", 1), 1)
    if not head(raw):
        return
    ratio = head(out) / head(raw)
    for key in ropes:
        rope = dict(out[key])
        for name in _ROPE_LISTS:
            factors = rope.get(name)
            if isinstance(factors, list) and factors:
                n = round(len(factors) * ratio)
                rope[name] = (factors * (n // len(factors) + 1))[:n]
        out[key] = rope


def candidates(fields: list[str]) -> list[sympy.Expr]:
    """Config expressions a dim may be: fields, 2*field, products of two fields, and
    the fused-QKV width. Ordered simplest first."""
    s = {f: _sym(f) for f in fields}
    out: list[sympy.Expr] = list(s.values()) + [2 * x for x in s.values()]
    out += [x / 2 for x in s.values()]  # e.g. rope's inv_freq: head_dim / 2
    out += [a * b for a, b in itertools.combinations(s.values(), 2)]
    h, kv, d = (s.get(k) for k in ("num_attention_heads", "num_key_value_heads", "head_dim"))
    if h is not None and kv is not None and d is not None:
        out += [(h + 2 * kv) * d, 2 * kv * d]
    hid = s.get("hidden_size")
    if hid is not None and h is not None and kv is not None:
        # engines that derive head_dim as hidden // heads, ignoring the config's head_dim
        out += [hid / h, kv * hid / h, (h + 2 * kv) * hid / h]
    return out


class FieldMatcher:
    """Maps (value in the original capture, value in the perturbed one) to fields. With
    `tp` > 1 (both captures one rank of a tensor-parallel group) a dim may also be an
    expression's shard, its value divided by `tp`."""

    def __init__(self, raw: dict, tp: int = 1):
        self.orig = field_values(raw)
        self.pert = {f: v * FACTORS[f] for f, v in self.orig.items()}
        exprs = candidates(sorted(self.orig))
        so = {_sym(f): v for f, v in self.orig.items()}
        sp = {_sym(f): v for f, v in self.pert.items()}
        self._table: dict[tuple[int, int], tuple[str, ...]] = {}
        for e in exprs:
            # SymPy expressions built here from config symbols and ints, never text from a file
            vo, vp = sympy.sympify(e.xreplace(so)), sympy.sympify(e.xreplace(sp))
            if not (vo.is_integer and vp.is_integer):
                continue
            names = tuple(sorted(config_field(x) for x in e.free_symbols))
            for key in ((int(vo), int(vp)), (int(vo) // tp, int(vp) // tp)):
                if key[0] != key[1] and key not in self._table:
                    self._table[key] = names
                if tp == 1 or int(vo) % tp or int(vp) % tp:
                    break  # a shard only of what the group divides evenly

    def fields(self, original: int, perturbed: int) -> tuple[str, ...]:
        return self._table.get((int(original), int(perturbed)), ())
