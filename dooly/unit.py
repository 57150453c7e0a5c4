"""Canonical units: what gets measured once and reused by every model that runs it.

A unit's key ignores model names: op + dtypes + config dims as ints + request dims
as canonical expressions + kernel-changing attributes (+ the subgraph for fused
regions). Units are plain data (JSON), so a DB or plan file never carries code."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from dooly.graph.canon import region_form
from dooly.symbolic.labels import DimLabel, Label

_NAME = re.compile(r"[A-Za-z_]\w*")

# What drives a unit's cost, from its request symbols.
DRIVERS = ("tokens", "seqs", "attention", "none")

# The matrix products, by canonical op name (dooly.graph.normalize.op_name): each is a
# unit of its own. bmm/baddbmm are batched; addmm/baddbmm take the bias first.
GEMM_OPS = frozenset({"linear", "mm", "addmm", "matmul", "bmm", "baddbmm"})
# Fused mixture-of-experts kernels whose expert routing is an input (dooly.routing): vLLM's
# CPU kernel (expert ids [T, k]); transformers' grouped GEMM over rows sorted by expert
# (where each expert's rows end, [E]). On CUDA vLLM routes inside its moe_forward op,
# which is not modelled yet.
GROUPED_MM = "_grouped_mm"
MOE_OPS = frozenset({"_C.cpu_fused_moe", GROUPED_MM})
# Collectives a tensor-parallel rank runs (vLLM's custom-op names): measured across a real
# group of processes (dooly.profile.collectives), keyed with their group size.
COLLECTIVE_OPS = frozenset({"vllm.all_reduce", "vllm.all_gather", "vllm.reduce_scatter"})
# multi-head latent attention (DeepSeek-V2/V3 style): the attributes its attention and
# KV-write units carry beside num_heads; the cache holds one latent "head" per token
MLA_ATTRS = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def is_mla(attrs: dict) -> bool:
    return bool(attrs.get("kv_lora_rank"))


@dataclass(frozen=True)
class TensorSig:
    dims: tuple[DimLabel, ...]
    dtype: str

    def shape(self) -> list[int | str]:
        return [d.value_or_expr for d in self.dims]

    def to_json(self) -> dict:
        return {"shape": self.shape(), "dtype": self.dtype,
                "labels": [d.label.value for d in self.dims]}

    @classmethod
    def from_json(cls, obj: dict) -> "TensorSig":
        labels = obj.get("labels") or ["CONFIG" if isinstance(v, int) else "REQUEST"
                                       for v in obj["shape"]]
        dims = tuple(DimLabel(v, Label(lab)) for v, lab in zip(obj["shape"], labels))
        return cls(dims, str(obj["dtype"]))


@dataclass(frozen=True)
class Unit:
    """op: a torch op name ("aten.linear.default", "vllm.unified_attention_with_output")
    or "fused" for a region of pointwise/reduction ops kept as `graph` data."""

    op: str
    inputs: tuple[TensorSig, ...]
    outputs: tuple[TensorSig, ...]
    attrs: tuple[tuple[str, Any], ...] = ()
    graph: dict | None = field(default=None, compare=False, hash=False)
    graph_hash: str = ""
    stateful: bool = False

    def __post_init__(self):
        if not self.op:
            raise ValueError("op: a unit needs an op name")
        if self.op == "fused" and not self.graph_hash:
            raise ValueError("graph_hash: a fused unit needs its subgraph hash")

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)

    def request_symbols(self) -> set[str]:
        names: set[str] = set()
        for t in self.inputs + self.outputs:
            for d in t.dims:
                if d.label is not Label.CONFIG:
                    names |= set(_NAME.findall(str(d.value_or_expr))) - {"floor"}
        return names

    @property
    def driver(self) -> str:
        if "driver" in self.attr:
            return self.attr["driver"]
        if self.stateful:
            return "attention" if "attention" in self.op else "tokens"
        syms = self.request_symbols()
        if "T" in syms or "Q" in syms:  # flattened tokens, or a padded [B, Q] batch
            return "tokens"
        if "B" in syms:
            return "seqs"
        return "none"

    def signature(self) -> dict:
        sig = {"op": self.op, "inputs": [t.to_json() for t in self.inputs],
               "outputs": [t.to_json() for t in self.outputs],
               "attrs": {k: v for k, v in self.attrs}, "stateful": self.stateful}
        if self.graph_hash:
            sig["graph_hash"] = self.graph_hash
        return sig

    @property
    def key(self) -> str:
        """A pure function of the signature (a fused unit's graph enters through
        graph_hash, the hash of its canonical form), so one unit has one key in any run."""
        blob = _dumps(self.signature())
        short = self.op.split(".")[-2] if self.op.count(".") >= 2 else self.op.split(".")[-1]
        return f"{short}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def identity(self) -> str:
        """What every unit stored under this key must agree on: the signature and, for a
        fused unit, its graph's canonical form, so that JSON key order, node order or an
        eps value never tell two copies apart, and a graph that differs always does."""
        ident = self.signature()
        if self.graph is not None:
            try:
                ident["graph"] = region_form(self.graph, [t.to_json() for t in self.inputs])
            except (AttributeError, KeyError, TypeError, ValueError):
                ident["graph"] = self.graph  # not a region we can read: compare it as data
        return _dumps(ident)

    def to_json(self) -> dict:
        out = dict(self.signature(), key=self.key)
        if self.graph is not None:
            out["graph"] = self.graph
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "Unit":
        return cls(op=obj["op"], inputs=tuple(TensorSig.from_json(t) for t in obj["inputs"]),
                   outputs=tuple(TensorSig.from_json(t) for t in obj["outputs"]),
                   attrs=tuple(sorted(obj.get("attrs", {}).items())), graph=obj.get("graph"),
                   graph_hash=obj.get("graph_hash", ""), stateful=bool(obj.get("stateful")))


def linear_unit(k: int, n: int, dtype: str) -> Unit:
    """`x [T, k] @ W[n, k]^T` without bias, as a captured `linear` of those config dims."""
    t, c = DimLabel("T", Label.REQUEST), lambda v: DimLabel(int(v), Label.CONFIG)
    return Unit(op="linear", inputs=(TensorSig((t, c(k)), dtype), TensorSig((c(n), c(k)), dtype)),
                outputs=(TensorSig((t, c(n)), dtype),), attrs=(("bias", False),))


def _plain(obj):
    # sets have no stable text of their own: sort them so a key never depends on the run
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_plain)


def call_args(call: list | None, t: tuple) -> list:
    """A recorded call's arguments: {"t": k} is the unit's k-th input, anything else a
    constant (an eps, a flag)."""
    if call is None:
        return list(t)
    return [t[a["t"]] if isinstance(a, dict) and "t" in a else a for a in call]
