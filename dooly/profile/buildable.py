"""Which units the sweep can rebuild from their stored data, known before anything runs.

A DB is data: a fused region is replayed by an interpreter that calls only listed tensor
methods and torch/operator functions found by attribute lookup, and any other op must be
in an allowed op namespace (`dooly.profile.runners`). A unit outside those lists fails at
every point of its sweep, and its model can never be predicted. `dooly analyze` and
`dooly sweep` name such units up front (Gemma-3's q/k norms, OLMo-2's rotary tables and
Phi-3.5's LongRoPE were such units until their methods were listed)."""
from __future__ import annotations

import operator
from typing import Callable

from dooly.graph.regions import eval_name
from dooly.unit import GEMM_OPS, GROUPED_MM, Unit

OP_NAMESPACES = ("vllm_ir", "_C", "vllm", "aten")
TENSOR_METHODS = {"view", "reshape", "to", "pow", "mean", "float", "half", "bfloat16", "long",
                  "contiguous", "transpose", "permute", "unsqueeze", "squeeze", "expand", "split",
                  "chunk", "flatten", "type_as", "size", "sum", "exp", "softmax", "tanh", "sigmoid",
                  "mul", "add", "sub", "div", "neg", "rsqrt", "sqrt", "clamp", "masked_fill", "int",
                  "masked_fill_",  # a TP rank zeroes the rows of ids outside its vocabulary shard
                  "max", "bool", "scatter_",   # DeepSeek's grouped top-k router
                  "repeat_interleave",
                  "unflatten",      # Gemma-3 splits heads for its q/k norms
                  "cos", "sin",     # OLMo-2 (vLLM's Transformers backend) builds its rotary tables
                  "repeat"}         # Phi-3.5's LongRoPE
# ops a runner builds itself rather than looking up by name
_BUILT_OPS = set(GEMM_OPS) | {GROUPED_MM, "embedding", "sampler", "fused"}


def region_calls(rows: list[dict], resolve_ops: bool = True) -> list[Callable | None]:
    """The callable of each row of a fused region (a tensor method's row gets
    `operator.methodcaller`); ValueError names the first row the interpreter refuses.
    `resolve_ops=False`: a `torch.ops.NS.*` target is checked by its namespace only, as an
    engine's ops are registered when its runner is built, not when a plan is made."""
    calls: list[Callable | None] = []
    for row in rows:
        target = str(row.get("target"))
        if row.get("kind") == "call_method":
            if target not in TENSOR_METHODS:
                raise ValueError(f"graph: tensor method {target!r} is not allowed")
            calls.append(operator.methodcaller)
        elif not resolve_ops and target.startswith("torch.ops."):
            check_namespace(target.split(".", 2)[2])
            calls.append(None)
        else:
            calls.append(eval_name(target))
    return calls


def check_namespace(name: str) -> None:
    """ValueError unless `name` (NS.op[.overload]) is in an allowed op namespace."""
    ns, *rest = name.split(".")
    if ns not in OP_NAMESPACES or not rest:
        raise ValueError(f"op: {name!r} is not in an allowed op namespace {OP_NAMESPACES}")


def why_unbuildable(unit: Unit) -> str | None:
    """Why the sweep cannot rebuild `unit` from its data (None: it can). Stateful units
    (attention, the KV-cache write) run through the engine's own backend and pass."""
    if unit.stateful:
        return None
    try:
        if unit.op == "fused":
            region_calls((unit.graph or {}).get("nodes", []), resolve_ops=False)
        elif unit.op not in _BUILT_OPS:
            check_namespace(unit.op)
    except ValueError as err:
        return str(err)
    return None


def unbuildable(inventories) -> dict[str, str]:
    """unit key -> reason, for every unit of the inventories the sweep cannot rebuild."""
    out: dict[str, str] = {}
    for inv in inventories:
        for key, e in inv.entries.items():
            if key not in out:
                why = why_unbuildable(e.unit)
                if why:
                    out[key] = why
    return out
