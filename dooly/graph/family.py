"""Unit families: the units that run one computation and differ only in config dims.

A family's key is the unit's key with its config dims removed: every CONFIG dim of every
tensor becomes a wildcard, a MIXED dim keeps its request symbols but not its config
coefficients, the ints an engine op is called with (a rotary's head size) are wildcarded,
and a fused region is keyed by the canonical form of its graph with the config ints in
its rows (a split's width) wildcarded. What changes the kernel stays in the key: the op,
the request dims, a bias, a role, an attention's head size and backend, dtypes (except
a GEMM's, whose itemsize is a feature); an attention's heads and sliding window are
config values the kernel takes as arguments, so they are features. What was removed is kept as the
family's config features (`config_features`), so a model fitted across a family's
members can tell them apart. Pure data over `dooly.unit.Unit` (no torch), so a plan, a
cost estimate or a stored fit can name a unit's family anywhere."""
from __future__ import annotations

import hashlib
import json
import re

from dooly.graph.canon import canonical_region
from dooly.symbolic.labels import Label
from dooly.unit import GEMM_OPS, TensorSig, Unit

WILD = "*"
# attention heads are features of the attention family, not part of its kernel; so is
# a sliding window: a config value the kernel takes as an argument (it masks keys beyond
# it), whose effect on the work the check points see (a layer's type is derived from it)
HEAD_ATTRS = ("num_heads", "num_kv_heads")
WINDOW_ATTR = "sliding_window"
CONFIG_ATTRS = HEAD_ATTRS + (WINDOW_ATTR, "layer_type")
# ints in a region's rows below this are dim indices, getitem slots or small flags (a
# top-k of 2); a width, a split point or a head layout is larger
SMALL_INT = 16
_DIGITS = re.compile(r"\d+")


def _wild_expr(expr: str) -> str:
    # a MIXED dim ("4096*T") keeps its request structure, not its config coefficient
    return _DIGITS.sub("#", expr)


def _tensor(t: TensorSig, keep_dtype: bool) -> dict:
    shape = []
    for d in t.dims:
        if d.label is Label.CONFIG:
            shape.append(WILD)
        elif d.label is Label.MIXED:
            shape.append(_wild_expr(str(d.value_or_expr)))
        else:
            shape.append(d.value_or_expr)
    return {"shape": shape, "dtype": t.dtype if keep_dtype else WILD,
            "labels": [d.label.value for d in t.dims]}


def _wild_ints(obj, small: int):
    """obj with every int (not a bool) of magnitude >= small replaced by WILD."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (float, str)):
        return obj
    if isinstance(obj, int):
        return WILD if abs(obj) >= small else obj
    if isinstance(obj, list):
        return [_wild_ints(x, small) for x in obj]
    if isinstance(obj, dict):
        if "sym" in obj and isinstance(obj["sym"], str):
            return {"sym": _wild_expr(obj["sym"])}
        if set(obj) <= {"ref", "in", "t"}:  # a slot reference, not a value
            return obj
        return {k: _wild_ints(v, small) for k, v in obj.items()}
    return obj


def _attrs(unit: Unit) -> dict:
    out = {}
    for k, v in unit.attrs:
        if k in CONFIG_ATTRS:
            continue
        if k == "call":
            out[k] = _wild_ints(v, 0)  # every int an engine op is called with is a size
        else:
            out[k] = v
    return out


def _graph_form(unit: Unit, in_labels: list) -> str:
    data = {k: v for k, v in (unit.graph or {}).items() if k != "input_shapes"}
    wild = dict(data, nodes=_wild_ints(data.get("nodes", []), SMALL_INT))
    return canonical_region(wild, in_labels).key


def family_signature(unit: Unit) -> dict:
    gemm = unit.op in GEMM_OPS
    inputs = [_tensor(t, not gemm) for t in unit.inputs]
    sig = {"op": unit.op, "inputs": inputs,
           "outputs": [_tensor(t, not gemm) for t in unit.outputs],
           "attrs": _attrs(unit), "stateful": unit.stateful}
    if unit.op == "fused" and unit.graph is not None:
        try:
            sig["graph"] = _graph_form(unit, inputs)
        except (KeyError, TypeError, ValueError):
            sig["graph"] = unit.graph_hash  # not a region we can read: its own family
    elif unit.graph_hash:
        sig["graph"] = unit.graph_hash
    return sig


def family_key(unit: Unit) -> str:
    """"<op>~<hash>": equal for units that differ only in config dims."""
    blob = json.dumps(family_signature(unit), sort_keys=True, separators=(",", ":"), default=str)
    short = unit.key.rsplit("-", 1)[0]
    return f"{short}~{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def config_features(unit: Unit) -> dict[str, float]:
    """The config values the family key removed, by a name stable within a family:
    tensor dims ("in1.0" = input 1's dim 0), attention heads and window, call ints."""
    out: dict[str, float] = {}
    for side, sigs in (("in", unit.inputs), ("out", unit.outputs)):
        for i, t in enumerate(sigs):
            for j, d in enumerate(t.dims):
                if d.label is Label.CONFIG:
                    out[f"{side}{i}.{j}"] = float(d.value_or_expr)
    attr = unit.attr
    for k in HEAD_ATTRS + ("head_size", WINDOW_ATTR):
        if isinstance(attr.get(k), (int, float)) and not isinstance(attr.get(k), bool):
            out[k] = float(attr[k])
    for i, a in enumerate(attr.get("call") or []):
        if isinstance(a, int) and not isinstance(a, bool):
            out[f"call{i}"] = float(a)
    return out
