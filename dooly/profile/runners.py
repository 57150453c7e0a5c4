"""Rebuild a stateless unit as a runnable call from its recorded op and shapes: random
inputs (never zeros) at a request point, then the engine's own op. Nothing is
executed from stored code: op names resolve by attribute lookup in allowed
namespaces, and fused regions are replayed by a small interpreter over their data."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from dooly.engines import amx_permission, gemm_call, gemm_weight, ir_body, moe_inputs, register_ops
from dooly.env import copies_to_span
from dooly.profile.buildable import check_namespace, region_calls
from dooly.profile.cost import nbytes
from dooly.profile.grid import point_values
from dooly.symbolic.labels import Label
from dooly.symbolic.symbols import evaluate
from dooly.unit import GEMM_OPS, GROUPED_MM, MOE_OPS, TensorSig, Unit, call_args


def dtype_of(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"dtype: unknown dtype {name!r}")
    return dt


def shape_at(sig: TensorSig, values: dict) -> list[int]:
    return [evaluate(d.value_or_expr, **values) for d in sig.dims]


def random_tensor(sig: TensorSig, values: dict, device: str, high: int = 1000) -> torch.Tensor:
    shape, dt = shape_at(sig, values), dtype_of(sig.dtype)
    if dt.is_floating_point:
        return torch.randn(shape, dtype=torch.float32, device=device).to(dt)
    if dt == torch.bool:
        return torch.rand(shape, device=device) > 0.5
    return torch.randint(0, max(high, 1), shape, dtype=dt, device=device)


def resolve_op(name: str):
    check_namespace(name)
    obj = torch.ops
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _decode(a, env, inputs, values, device="cpu"):
    if isinstance(a, list):
        return [_decode(x, env, inputs, values, device) for x in a]
    if not isinstance(a, dict):
        return a
    if "ref" in a:
        return env[a["ref"]]
    if "in" in a:
        return inputs[a["in"]]
    if "sym" in a:
        return evaluate(a["sym"], **values)
    if "slice" in a:
        return slice(*[_decode(x, env, inputs, values, device) for x in a["slice"]])
    if "ellipsis" in a:
        return Ellipsis
    if "device" in a:
        return torch.device(device)
    if "layout" in a:
        return getattr(torch, a["layout"])
    if "dtype" in a:
        return dtype_of(a["dtype"])
    if "tuple" in a:
        return tuple(_decode(x, env, inputs, values, device) for x in a["tuple"])
    if "dict" in a:
        return {k: _decode(v, env, inputs, values, device) for k, v in a["dict"].items()}
    raise ValueError(f"graph: cannot rebuild argument {a!r}")


def _histc_on_cpu(x, *args, **kwargs):
    # torch's CPU histogram has no integer kernel, and transformers' MoE casts its expert ids
    # to float on CPU; a capture on meta tensors records the integer path of other devices
    return torch.ops.aten.histc.default(x if x.is_floating_point() else x.float(), *args, **kwargs)


_ON_CPU = {"torch.ops.aten.histc.default": _histc_on_cpu}


def region_fn(unit: Unit, device: str = "cpu") -> Callable:
    """Interpreter over a fused region's data. Request symbols are read from the input
    shapes at run time, so a compiled version stays dynamic in them."""
    data = unit.graph or {}
    rows = data.get("nodes", [])
    where: dict[str, tuple[int, int]] = {}
    for k, sig in enumerate(unit.inputs):
        for i, d in enumerate(sig.dims):
            if d.label is not Label.CONFIG and str(d.value_or_expr).isidentifier():
                where.setdefault(str(d.value_or_expr), (k, i))
    calls = region_calls(rows)
    if device == "cpu":
        calls = [_ON_CPU.get(row["target"], fn) for row, fn in zip(rows, calls)]

    def run(*inputs):
        values = {s: inputs[k].shape[i] for s, (k, i) in where.items()}
        env = []
        for row, fn in zip(rows, calls):
            args = _decode(row["args"], env, inputs, values, device)
            kwargs = _decode({"dict": row["kwargs"]}, env, inputs, values, device)
            if row["kind"] == "call_method":
                env.append(getattr(args[0], row["target"])(*args[1:], **kwargs))
            else:
                env.append(fn(*args, **kwargs))
        return [env[i] for i in data.get("outputs", [])]
    return run


def compiles(unit: Unit, execution: str) -> bool:
    """What an engine that compiles its graph (vLLM on CPU: Inductor) runs compiled:
    fused regions and IR ops it lowers to native; GEMMs and custom kernels stay opaque."""
    return execution == "compiled" and (unit.op == "fused" or unit.op.startswith("vllm_ir."))


def is_weight(sig: TensorSig) -> bool:
    """An input fixed by the config alone (a weight, a norm scale, a table)."""
    return bool(sig.dims) and all(d.label is Label.CONFIG for d in sig.dims)


# Weight sets a cold timing rotates through, at most: together they span four CPU
# last-level caches (dooly.env.SPAN_CACHES) down to weights of 4 * LLC / 1024 (about 420 KiB
# for a 105 MiB L3), below which reading the weight from memory costs microseconds.
MAX_WEIGHT_COPIES = 1024


def cold_copies(unit: Unit, values: dict, device: str) -> int:
    """How many weight sets to rotate through so that no timed call finds its weights
    still cached by an earlier one: together they span several last-level caches
    (dooly.env.copies_to_span), as a real forward streams every layer's weights between
    two calls of one layer (16 sets of a SmolLM2 layer's 0.7-3.5 MB weights span less
    than a 105 MiB L3). Activations stay shared: in a real forward they were just written
    by the previous op and are cache-hot."""
    weights = sum(nbytes(s, values) for s in unit.inputs if is_weight(s))
    return copies_to_span(weights, device, MAX_WEIGHT_COPIES) if weights else 1


def routed_inputs(unit: Unit, ins: list, point: dict) -> None:
    """A fused-MoE unit's router outputs as the point's distribution makes them: expert ids
    [T, k] drawn from it (dooly.routing) and positive top-k weights summing to 1 per token;
    for a grouped GEMM, where each expert's rows end."""
    from dooly.routing import expert_ids, group_offsets, moe_shape, routing_of
    if unit.op == GROUPED_MM:   # ins: rows [T*k, K], experts' weights [E, K, N], offsets [E]
        offs = group_offsets(ins[0].shape[0], ins[1].shape[0], routing_of(point))
        ins[2] = torch.from_numpy(offs).to(ins[2].device)   # a fresh tensor: weight sets share theirs
        return
    experts, top_k = moe_shape(unit)
    for sig, t in zip(unit.inputs, ins):
        if len(sig.dims) != 2 or t.shape[-1] != top_k:
            continue
        if not t.is_floating_point():
            ids = expert_ids(t.shape[0], experts, top_k, routing_of(point))
            t.copy_(torch.from_numpy(ids).to(t.dtype))
        elif t.dtype == torch.float32:
            t.uniform_(0.1, 1.0)
            t.div_(t.sum(dim=-1, keepdim=True))
    if ins and ins[0].device.type == "cpu":
        amx_permission()


def gemm(engine: str, device: str, op: str, ins: list, linear=None) -> Callable[[], object]:
    """A matrix product as the engine runs it: `linear` through the engine's own GEMM
    (it may prepack the weight; `linear`: that GEMM already built for ins[1]), the others
    as torch's op of that name."""
    if op == "linear":
        bias = ins[2] if len(ins) > 2 else None
        if linear is not None:
            return lambda: linear(ins[0], bias)
        return gemm_call(engine, device, ins[0], ins[1], bias)
    fn = getattr(torch, op)
    return lambda: fn(*ins)


class StatelessRunner:
    """One runnable per unit; the compiled body is shared across grid points."""

    def __init__(self, unit: Unit, engine: str, device: str = "cpu", execution: str = "eager",
                 cold: bool = False):
        self.cold = cold
        if unit.stateful:
            raise ValueError(f"unit: {unit.key} is stateful; use the engine's attention runner")
        self.unit, self.engine, self.device = unit, engine, device
        # its op, or a fused region's, may be one of the engine's own: registered by model
        # code this process may never have imported
        register_ops(engine)
        self._body = self._make_body()
        self._compiled = None
        if compiles(unit, execution):
            from dooly.profile.compiled import DirectCompiled
            if unit.op.startswith("vllm_ir."):
                self._body = ir_body(engine, unit) or self._body
            self._compiled = DirectCompiled(self._body)
        self.release()

    def release(self) -> None:
        """Drop the cold weight sets (up to four last-level caches): the sweep calls
        this when it moves on to another unit."""
        self._sets: list[dict[int, torch.Tensor]] = []   # weight copies, shared by every point
        self._linears: list = []                          # the engine's GEMM per weight copy
        self._turn = 0   # the next copy: the rotation goes on across points, so no point
        # starts on a copy that the last point's calls left in the cache

    def _make_body(self) -> Callable:
        u = self.unit
        if u.op == "fused":
            return region_fn(u, self.device)
        if u.op == "embedding":
            return None  # built per point: ids must index the table
        if u.op == "sampler":
            return lambda logits: torch.argmax(logits.float(), dim=-1)
        if u.op in GEMM_OPS or u.op == GROUPED_MM:
            return None  # built per point: the engine may prepack the weight
        op = resolve_op(u.op)
        call = u.attr.get("call")
        return lambda *t: op(*call_args(call, t))

    def prepare(self, point: dict) -> Callable[[], object]:
        if not self.cold:
            return self._prepare_one(point)
        values = point_values(point)
        n = cold_copies(self.unit, values, self.device)
        if n == 1:
            return self._prepare_one(point)
        self._weight_sets(values, n)
        shared = self._inputs(values, weights=False)
        calls = [self._prepare_one(point, shared, k) for k in range(n)]

        def call():
            k, self._turn = self._turn % n, self._turn + 1
            return calls[k]()
        return call

    def _weight_sets(self, values: dict, n: int) -> None:
        """`n` copies of the weights (config dims only: one set serves every point), and
        the engine's GEMM built once per copy, as it is when a model loads."""
        u = self.unit
        while len(self._sets) < n:
            self._sets.append({i: random_tensor(sig, values, self.device, 1000)
                               for i, sig in enumerate(u.inputs) if is_weight(sig)})
            if u.op == "linear" and 1 in self._sets[-1]:
                self._linears.append(gemm_weight(self.engine, self.device, self._sets[-1][1]))

    def _inputs(self, values: dict, weights: bool = True) -> list:
        return [random_tensor(sig, values, self.device, 1000) if weights or not is_weight(sig) else None
                for sig in self.unit.inputs]

    def _prepare_one(self, point: dict, shared: list | None = None,
                     copy: int | None = None) -> Callable[[], object]:
        """Random inputs at this point; with `shared` and `copy`, the point's activations
        and that weight copy."""
        values = point_values(point)
        u = self.unit
        if shared is None:
            ins = self._inputs(values)
        else:
            ins = [self._sets[copy][i] if i in self._sets[copy] else t for i, t in enumerate(shared)]
        if u.op == "embedding":
            w = next(t for t in ins if t.is_floating_point())
            ids = next(t for t in ins if not t.is_floating_point())
            ids.random_(0, w.shape[0])
            return lambda: F.embedding(ids, w)
        if u.op in MOE_OPS:
            routed_inputs(u, ins, point)
            ins = moe_inputs(self.engine, self.device, u, ins)
        if u.op == "_C.rotary_embedding":
            cache = ins[-1]
            ins[0].random_(0, cache.shape[0])  # positions index the cos/sin cache
        if self._body is None:
            linear = self._linears[copy] if self._linears and copy is not None else None
            return gemm(self.engine, self.device, u.op, ins, linear)
        if self._compiled is not None:
            if not self._compiled.ready:
                # request dims at distinct odd sizes: no 0/1 specialization, no two request
                # dims merged because they happened to be equal
                general = {k: 37 + 4 * i for i, k in enumerate(sorted(values))}
                dims = [(k, i) for k, sig in enumerate(self.unit.inputs)
                        for i, d in enumerate(sig.dims) if d.label is not Label.CONFIG]
                self._compiled.compile(self._inputs(general), dims)
            return self._compiled.bind(ins)
        body = self._body
        return lambda: body(*ins)
