"""vLLM's own kernels for units timed alone: the CPU GEMM dispatch vLLM picks per
shape, and the implementation each vLLM IR op is lowered to before Inductor runs."""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from dooly.engines import set_vllm_environ
from dooly.unit import call_args


def cpu_linear_of(w) -> Callable[..., object]:
    """`linear(x, bias)` through vLLM's CPU GEMM dispatch (oneDNN / sgl kernels /
    zentorch) for this weight, which it may prepack: built once per weight."""
    set_vllm_environ()
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(w, requires_grad=False)
    dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
    return direct_onednn(layer.cpu_linear) or (lambda x, bias: layer.cpu_linear(x, layer.weight, bias))


def direct_onednn(cpu_linear) -> Callable[..., object] | None:
    """vLLM's oneDNN GEMM as the engine's compiled graph runs it: Dynamo traces through the
    dispatch's Python (`cpu_linear` -> `ops.onednn_mm`), so the generated code allocates the
    output and calls the custom op itself. Called through those wrappers, a unit pays a few
    microseconds per call that the engine does not (on the 2-core AMD VM, 2026-12-06: 24.5
    against 20.0 us for a 576 x 576 weight at one token; the engine's decode GEMMs of 2 MiB or
    less ran at 0.80-0.91x units timed that way). None where vLLM picked another kernel."""
    try:
        handler = inspect.getclosurevars(cpu_linear).nonlocals.get("handler")
    except TypeError:
        return None
    if handler is None or not hasattr(handler, "handler_tensor"):
        return None
    op, n, k = torch.ops._C.onednn_mm.default, int(handler.n), int(handler.k)

    def run(x, bias):
        x2 = x.reshape(-1, k)                                   # [T, K]
        out = torch.empty((x2.shape[0], n), dtype=x.dtype)      # [T, N]
        op(out, x2, bias, handler.handler_tensor)
        return out.view(*x.shape[:-1], n)
    return run


def cpu_moe_weights(ins: list, isa: str) -> list:
    """The expert weights (3-D inputs) in the layout vLLM's CPU fused MoE reads: its
    experts prepack them for the kernel's ISA after loading (cpu_moe.py)."""
    set_vllm_environ()
    from vllm._custom_ops import cpu_prepack_moe_weight
    return [cpu_prepack_moe_weight(t, isa) if t.dim() == 3 and t.is_floating_point() else t for t in ins]


def lowered_ir(unit) -> Callable | None:
    """vLLM lowers each IR op to the implementation its platform prefers before Inductor
    sees the graph, so Inductor fuses that body; compiling the opaque custom op instead
    would time the op's dispatch as well (about 3x the cost of a small norm on CPU)."""
    set_vllm_environ()
    try:
        from vllm.ir.op import IrOp
    except ImportError:
        return None
    op = IrOp.registry.get(unit.op.split(".")[1])
    if op is None:
        return None
    call = unit.attr.get("call")

    def run(*t):
        args = call_args(call, t)
        return op.dispatch(*args).impl_fn(*args)
    return run
