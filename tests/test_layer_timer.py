"""The per-layer timer sees every GEMM a compiled graph runs, whichever way it calls it."""
import types

from dooly.engines.vllm_layers import LayerTimer, kernel_kind


def _fake_torch(calls):
    def onednn_mm(*a):
        calls.append("onednn_mm")
    overload = types.SimpleNamespace(default=onednn_mm)
    c_ns = types.SimpleNamespace(onednn_mm=overload, other_op=types.SimpleNamespace(default=lambda: calls.append("other")))
    return types.SimpleNamespace(ops=types.SimpleNamespace(_C=c_ns), float32="f32")


def _generated_module(calls):
    mod = types.ModuleType("generated")
    mod.torch = _fake_torch(calls)
    mod.cpp_fused_add_mean_mul_pow_rsqrt_0 = lambda: calls.append("norm")
    code = ("def call():\n"
            "    cpp_fused_add_mean_mul_pow_rsqrt_0()\n"
            "    torch.ops._C.onednn_mm.default(1, 2, None, 3)\n"
            "    torch.ops._C.other_op.default()\n"
            "    return torch.float32\n")
    exec(compile(code, "generated", "exec"), mod.__dict__)
    return mod


def test_prepacked_cpu_gemms_are_timed_as_gemms(monkeypatch):
    from torch._inductor.codecache import PyCodeCache
    calls: list[str] = []
    mod = _generated_module(calls)
    monkeypatch.setattr(PyCodeCache, "modules", [mod])
    timer = LayerTimer()
    assert mod.call() == "f32"   # everything else still resolves to the real object
    assert calls == ["norm", "onednn_mm", "other"]
    assert timer.calls["gemm"] == 1 and timer.calls["norm"] == 1
    assert timer.calls["other_fused"] == 0


def test_a_module_is_patched_once(monkeypatch):
    from torch._inductor.codecache import PyCodeCache
    calls: list[str] = []
    mod = _generated_module(calls)
    monkeypatch.setattr(PyCodeCache, "modules", [mod])
    timer = LayerTimer()
    timer.patch_compiled()
    mod.call()
    assert timer.calls["gemm"] == 1


def test_fused_kernels_are_named_by_what_they_compute():
    assert kernel_kind("cpp_fused__to_copy_add_mean_mul_onednn_mm_pow_rsqrt_3") == "norm"
    assert kernel_kind("cpp_fused_mul_onednn_mm_silu_slice_2") == "act"
    assert kernel_kind("cpp_fused_add_index_select_mul_split_4") == "rope"


def test_gemm_kernels_are_summed_per_weight_shape():
    """Inductor's `mm(a, b)` returns its product; vLLM's CPU ops write their first
    argument: both give (M, K, N), so a step's GEMM time splits by weight."""
    import torch
    from dooly.engines.vllm_layers import gemm_dims
    a, b = torch.zeros(3, 4), torch.zeros(4, 5)
    assert gemm_dims((a, b), {}, a @ b) == (3, 4, 5)
    assert gemm_dims((torch.empty(3, 5), a, None, torch.zeros(8)), {}, None) == (3, 4, 5)
    assert gemm_dims((a, b), {"out": torch.empty(3, 5)}, None) == (3, 4, 5)
    assert gemm_dims((torch.zeros(2, 3, 4), b), {}, None) is None
    timer = LayerTimer()
    mm = timer.timed(lambda x, w: x @ w, "gemm")
    for _ in range(2):
        mm(a, b)
    ms, calls = timer.summary(1.0)["k_gemm_shapes"]["3x4x5"]
    assert calls == 2 and ms >= 0.0
