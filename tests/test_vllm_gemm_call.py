"""A GEMM unit is timed the way vLLM's compiled CPU graph calls its GEMM, not through the
Python dispatch the graph was traced from."""
import pytest
import torch

from conftest import needs_vllm
from dooly.engines.vllm_ops import direct_onednn


def test_a_gemm_vllm_did_not_hand_to_onednn_keeps_its_dispatch():
    weight = torch.zeros(3, 2)
    assert direct_onednn(lambda x, w, bias: torch.nn.functional.linear(x, weight, bias)) is None
    assert direct_onednn(torch.nn.functional.linear) is None   # a builtin has no closure


@needs_vllm
def test_the_onednn_gemm_is_called_directly_and_computes_the_product():
    from dooly.engines.vllm_ops import cpu_linear_of
    w, x = torch.randn(96, 64, dtype=torch.bfloat16), torch.randn(5, 64, dtype=torch.bfloat16)
    bias = torch.randn(96, dtype=torch.bfloat16)
    linear = cpu_linear_of(w.clone())
    if "direct_onednn" not in linear.__qualname__:
        pytest.skip("vLLM picked another CPU GEMM kernel on this host")
    out = linear(x, bias)   # [T, N]
    assert out.shape == (5, 96)
    torch.testing.assert_close(out.float(), x.float() @ w.float().t() + bias.float(), atol=0.5, rtol=0.05)
