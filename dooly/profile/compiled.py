"""Inductor-compiled unit bodies called the way vLLM calls its compiled graph: traced once
for a general request size and then invoked directly, without Dynamo's guard checks.

vLLM drops Dynamo's guards (it compiles once and never recompiles), so a step pays the
compiled kernels and one wrapper per piecewise graph. Timing a unit through
`torch.compile(fn)` would add a guard evaluation and frame wrapper on every call, about
15 us on this CPU, which is the size of a small norm; and a first call at T=1 would
compile a graph specialized to one token, which vLLM never runs."""
from __future__ import annotations

import types
from typing import Callable

import torch


def _arg_getter(source) -> Callable[[tuple], object] | None:
    """How to read one graph input from the call's argument tuple `t`: the tensor t[k], or
    one of its sizes or strides. Anything else Dynamo lifted (globals, closures) -> None."""
    from torch._dynamo.source import GetItemSource, LocalSource, TensorProperty, TensorPropertySource

    def item_index(src) -> int | None:
        if (isinstance(src, GetItemSource) and isinstance(src.base, LocalSource)
                and src.base.local_name == "t" and isinstance(src.index, int)):
            return src.index
        return None

    k = item_index(source)
    if k is not None:
        return lambda t: t[k]
    if isinstance(source, TensorPropertySource):
        k, i = item_index(source.base), source.idx
        if k is None:
            return None
        if source.prop is TensorProperty.SIZE:
            return lambda t: t[k].shape[i]
        if source.prop is TensorProperty.STRIDE:
            return lambda t: t[k].stride(i)
    return None


def _call(*t):
    return t[0](*t[1:])   # the body travels as t[0] so every input is a local of `t`


class DirectCompiled:
    """`body(*tensors)` compiled by Inductor, request dims symbolic and config dims static.
    `compile` traces it once on general inputs (request dims of at least 2, so nothing is
    specialized to one token); `bind` then calls the compiled function directly. Falls
    back to the guarded `torch.compile` path for a body Dynamo splits or lifts state from."""

    def __init__(self, body: Callable):
        self._body = body
        # Dynamo keeps its compiled variants on the code object and, past `recompile_limit`
        # (8) of them, runs that code eagerly from then on without a word: with one `_call`
        # shared by every unit, each unit after the eighth in a process (the third model of
        # a multi-model sweep whose captures came from the cache, so no capture reset Dynamo
        # in between) was timed as eager torch ops, 2-6x its compiled time. One code object
        # per body, as vLLM compiles each model's forward once.
        call = types.FunctionType(_call.__code__.replace(), _call.__globals__, _call.__name__)
        # config dims stay static, as in vLLM's graph: only the marked request dims are symbolic
        self._guarded = torch.compile(call, backend=self._backend)
        self._graphs: list = []
        self._direct: Callable | None = None
        self.ready = False

    def _backend(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx
        getters = []   # read before Inductor rewrites the graph's metadata
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                grapharg = node.meta.get("grapharg")
                getters.append(_arg_getter(grapharg.source) if grapharg is not None else None)
        compiled = compile_fx(gm, example_inputs)
        self._graphs.append((getters, compiled))
        return compiled

    def compile(self, general_inputs: list, dynamic_dims: list[tuple[int, int]]) -> None:
        """dynamic_dims: (input index, dim) of every request dim."""
        for k, i in dynamic_dims:
            torch._dynamo.mark_dynamic(general_inputs[k], i)
        # ints read from a region's data (slice bounds, split sizes) are config constants
        with torch._dynamo.config.patch(specialize_int=True, specialize_float=True):
            self._guarded(self._body, *general_inputs)
        if not self._graphs:
            raise RuntimeError("Dynamo compiled no graph of this body: timed, it would run eagerly")
        self.ready = True
        if len(self._graphs) != 1:
            return   # graph breaks: keep the guarded path
        getters, compiled = self._graphs[0]
        if any(g is None for g in getters):
            return

        def direct(*inputs):
            t = (self._body, *inputs)
            return compiled(*[g(t) for g in getters])
        self._direct = direct

    def bind(self, inputs: list) -> Callable[[], object]:
        """A zero-argument call on these inputs, direct when that runs on them."""
        if not self.ready:
            raise RuntimeError("DirectCompiled.bind before compile")
        if self._direct is not None:
            direct = self._direct
            try:
                direct(*inputs)
                return lambda: direct(*inputs)
            except (AssertionError, RuntimeError, IndexError, ValueError):
                pass   # inputs outside what the general trace assumed (duck-sized dims)
        guarded, body = self._guarded, self._body
        return lambda: guarded(body, *inputs)
