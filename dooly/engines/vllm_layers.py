"""Per-layer timing inside vLLM's worker: where a forward's time goes.

On CPU, vLLM 0.32 compiles the whole forward as ONE Inductor graph (mode
DYNAMO_TRACE_ONCE, backend "inductor"; `vllm/platforms/cpu.py`): Inductor's generated
`call` runs, in Python, one C++ kernel per fused region (`cpp_fused_*`), one GEMM per
linear layer (`extern_kernels.mm`, or on hosts where vLLM prepacks weights for oneDNN or
the sgl kernels its custom ops `torch.ops._C.onednn_mm` / `weight_packed_linear`), and
vLLM's attention and KV-write custom ops between them.
On GPU hosts vLLM splits the graph at its attention ops into compiled pieces
(`PiecewiseBackend`, one call per piece) with the attention ops run eagerly between them.
`LayerTimer` times, at class or module level:
- every generated kernel call of every compiled graph Inductor has loaded (`PyCodeCache`),
  by kind: a fused region by what it computes (norm, rope, activation), a GEMM;
- the attention backend's `forward` and `do_kv_cache_update` (the kernels alone);
- each `PiecewiseBackend` call and the time between calls, where there are pieces.
What the forward spends outside all of these is the custom-op dispatch of the attention
ops, buffer allocation and the Python of the compiled graph: per-layer engine work that
no unit timed alone sees."""
from __future__ import annotations

import time

KERNEL_KINDS = ("gemm", "norm", "rope", "act", "other_fused", "attn", "kv")


def kernel_kind(name: str) -> str:
    """What a generated C++ kernel computes, from the ops Inductor names it after."""
    if "index_select" in name or "rotary" in name:
        return "rope"
    if "rsqrt" in name:
        return "norm"
    if "silu" in name or "gelu" in name:
        return "act"
    return "other_fused"


def gemm_dims(args, kwargs, result) -> tuple[int, int, int] | None:
    """(M, K, N) of a GEMM call as compiled code makes it: `mm(a [M, K], b [K, N])` returns
    its product (or writes `out=`); vLLM's CPU ops write a preallocated first argument,
    `onednn_mm(out [M, N], x [M, K], bias, handle)`. None when neither form is recognised."""
    mats = [t for t in (*args, *kwargs.values()) if getattr(t, "dim", lambda: 0)() == 2]
    res = result if getattr(result, "dim", lambda: 0)() == 2 else kwargs.get("out")
    if res is None and len(mats) >= 2 and mats[0] is args[0]:
        res = mats[0]
    x = next((t for t in mats if t is not res and res is not None and t.shape[0] == res.shape[0]), None)
    if res is None or x is None:
        return None
    return int(res.shape[0]), int(x.shape[1]), int(res.shape[1])


class _Extern:
    """Stands in for a compiled module's `extern_kernels`, timing its GEMMs."""

    def __init__(self, inner, timer):
        self._inner, self._timer = inner, timer

    def __getattr__(self, name):
        fn = getattr(self._inner, name)
        if name in ("mm", "addmm", "bmm", "baddbmm"):
            return self._timer.timed(fn, "gemm")
        return fn


# vLLM's CPU GEMM custom ops (`dispatch_cpu_unquantized_gemm`) as generated code calls them
GEMM_OPS = ("onednn_mm", "weight_packed_linear", "zentorch_linear_unary")


class _Proxy:
    """Stands in for `torch` in a generated module: `torch.ops._C.<GEMM op>.<overload>`
    resolves to a timed call, everything else to the real object (the generated `call`
    looks these up by attribute at every call, so the module's global is what to replace)."""

    def __init__(self, inner, timer, path: tuple[str, ...] = ()):
        self._inner, self._timer, self._path = inner, timer, path

    def __getattr__(self, name):
        obj = getattr(self._inner, name)
        path = self._path + (name,)
        if path in (("ops",), ("ops", "_C")) or (len(path) == 3 and name in GEMM_OPS):
            return _Proxy(obj, self._timer, path)
        if len(path) == 4:   # torch.ops._C.<GEMM op>.<overload>
            return self._timer.timed(obj, "gemm")
        return obj

    def __call__(self, *a, **k):   # the packet called without an overload
        return self._timer.timed(self._inner, "gemm")(*a, **k)


class LayerTimer:
    def __init__(self):
        self._patched: set[int] = set()
        self.reset()

    def reset(self) -> None:
        self.ms = dict.fromkeys(KERNEL_KINDS, 0.0)
        self.calls = dict.fromkeys(KERNEL_KINDS, 0)
        self.piece_ms, self.pieces, self.gap_ms = 0.0, 0, 0.0
        self.gemm_shapes: dict[str, list] = {}   # "MxKxN" -> [ms, calls]
        self._last_end = None
        self.patch_compiled()

    def timed(self, fn, kind: str):
        timer = self

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = None
            try:
                out = fn(*a, **k)
                return out
            finally:
                ms = (time.perf_counter() - t0) * 1e3
                timer.ms[kind] += ms
                timer.calls[kind] += 1
                if kind == "gemm":
                    timer._add_shape(gemm_dims(a, k, out), ms)
        return wrapper

    def _add_shape(self, dims, ms: float) -> None:
        if dims is not None:
            entry = self.gemm_shapes.setdefault("x".join(map(str, dims)), [0.0, 0])
            entry[0] += ms
            entry[1] += 1

    def patch_compiled(self) -> None:
        """Wrap the kernels of every compiled graph loaded since the last call (the first
        forward compiles; later ones find nothing new)."""
        try:
            from torch._inductor.codecache import PyCodeCache
        except ImportError:
            return
        for mod in list(PyCodeCache.modules):
            if id(mod) in self._patched:
                continue
            self._patched.add(id(mod))
            for name, obj in list(vars(mod).items()):
                if name.startswith("cpp_fused") and callable(obj):
                    setattr(mod, name, self.timed(obj, kernel_kind(name)))
                elif name == "extern_kernels":
                    setattr(mod, name, _Extern(obj, self))
                elif name == "torch" and hasattr(obj, "ops"):
                    setattr(mod, name, _Proxy(obj, self))

    def install(self) -> None:
        for cls in _attention_impls():
            cls.forward = self.timed(cls.forward, "attn")
            if hasattr(cls, "do_kv_cache_update"):
                cls.do_kv_cache_update = self.timed(cls.do_kv_cache_update, "kv")
        try:
            from vllm.compilation.piecewise_backend import PiecewiseBackend
        except ImportError:
            return
        timer, orig_call = self, PiecewiseBackend.__call__

        def piece_call(backend, *args):
            t0 = time.perf_counter()
            if timer._last_end is not None:
                timer.gap_ms += (t0 - timer._last_end) * 1e3
            try:
                return orig_call(backend, *args)
            finally:
                timer._last_end = time.perf_counter()
                timer.piece_ms += (timer._last_end - t0) * 1e3
                timer.pieces += 1
        PiecewiseBackend.__call__ = piece_call

    def summary(self, forward_ms: float) -> dict:
        """The forward's parts (ms) and calls; `graph_other_ms` is what no kernel accounts for."""
        out = {f"k_{k}_ms": v for k, v in self.ms.items()}
        out.update({f"k_{k}_calls": v for k, v in self.calls.items()})
        out.update(pieces_ms=self.piece_ms, n_pieces=self.pieces, gaps_ms=self.gap_ms,
                   graph_other_ms=forward_ms - sum(self.ms.values()))
        out["k_gemm_shapes"] = {k: list(v) for k, v in self.gemm_shapes.items()}
        return out


def _attention_impls() -> list[type]:
    """The attention implementations this host's vLLM can run (CPU here)."""
    out = []
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl
        out.append(CPUAttentionBackendImpl)
    except ImportError:
        pass
    return out
