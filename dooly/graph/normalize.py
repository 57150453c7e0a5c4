"""Name every node's op canonically and give it a role, whichever capture made the
graph (Dynamo's torch-level IR from vLLM, or make_fx's aten IR from transformers).

Roles: `anchor` ops are units of their own (GEMMs, embedding, attention, KV-cache
writes, engine custom ops); `compute` ops (pointwise, reductions, casts) are grouped
into fused regions; `view` ops move no data. Results go in node.meta["dooly"]."""
from __future__ import annotations

import operator

import torch
import torch.fx

from dooly.unit import GEMM_OPS, GROUPED_MM
ATTENTION_OPS = {"scaled_dot_product_attention", "vllm.unified_attention_with_output",
                 "vllm.unified_attention", "vllm.unified_mla_attention_with_output"}
KV_WRITE_OPS = {"vllm.unified_kv_cache_update", "vllm.unified_mla_kv_cache_update"}
ANCHOR_OPS = GEMM_OPS | ATTENTION_OPS | KV_WRITE_OPS | {"embedding", GROUPED_MM}
VIEW_OPS = {
    "view", "reshape", "_unsafe_view", "split", "split_with_sizes", "getitem", "contiguous",
    "unsqueeze", "squeeze", "transpose", "permute", "expand", "flatten", "t", "size",
    "_get_data_attr", "detach", "Size", "slice", "select", "alias", "unbind", "chunk",
    "narrow", "sym_size", "sym_numel", "dim", "clone", "lift_fresh_copy", "_assert_tensor_metadata",
    "empty", "new_empty", "empty_like", "zeros", "ones", "full", "arange", "empty_strided",
    "_to_copy_same", "set_grad_enabled", "_set_grad_enabled", "_enter_autocast", "_exit_autocast",
}
CAST_OPS = {"to", "long", "float", "half", "bfloat16", "int", "type_as", "_to_copy", "type"}
_FUNC_NAMES = {operator.mul: "mul", operator.add: "add", operator.sub: "sub",
               operator.truediv: "div", operator.getitem: "getitem", operator.neg: "neg",
               operator.floordiv: "floordiv", operator.pow: "pow", operator.matmul: "matmul",
               operator.iadd: "add", operator.imul: "mul"}
STRIP_NAMESPACES = ("aten.", "prims.", "torch.")


def op_name(node: torch.fx.Node) -> str:
    """A model-independent name for what a node runs."""
    if node.op in ("placeholder", "get_attr", "output"):
        return node.op
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_module":
        return "module"
    target = node.target
    if target in _FUNC_NAMES:
        return _FUNC_NAMES[target]
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        name = str(target)  # e.g. "aten.linear.default", "vllm.unified_kv_cache_update"
        if name.startswith(STRIP_NAMESPACES):
            return name.split(".")[1]
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[-1] in ("default",) else name
    return getattr(target, "__name__", str(target))


def _val(node):
    return node.meta.get("val", node.meta.get("example_value"))


def _dtype_of(x):
    return getattr(x, "dtype", None)


def role_of(node: torch.fx.Node, name: str) -> str:
    if node.op in ("placeholder", "get_attr"):
        return "input"
    if node.op == "output":
        return "output"
    if name in ANCHOR_OPS or name.split(".")[-1] in {"scaled_dot_product_attention"}:
        return "anchor"
    if "." in name:  # an engine custom op: vllm_ir.rms_norm, _C.rotary_embedding...
        return "anchor"
    if name in VIEW_OPS:
        return "view"
    if name in CAST_OPS:
        src = node.args[0] if node.args else None
        same = isinstance(src, torch.fx.Node) and _dtype_of(_val(src)) == _dtype_of(_val(node))
        return "view" if same else "compute"
    if not isinstance(_val(node), (torch.Tensor, tuple, list)):
        return "view"  # symbolic-int arithmetic, sizes
    return "compute"


def normalize_pass(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    for node in gm.graph.nodes:
        name = op_name(node)
        info = node.meta.setdefault("dooly", {})
        info["op"] = name
        info["role"] = role_of(node, name)
    return gm
