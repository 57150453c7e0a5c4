"""The rules every room shares: which ops are matrix products, how many bytes a dtype
takes, and how much cache a cold timing must overflow."""
import pytest
import torch

import dooly.env as env_mod
from dooly.env import cache_bytes, cold_span, copies_to_span, itemsize
from dooly.fit.gemm_rows import gemm_shape, is_gemm
from dooly.graph.normalize import ANCHOR_OPS
from dooly.profile.cost import flops_bytes
from dooly.profile import runners
from dooly.profile.runners import MAX_WEIGHT_COPIES, StatelessRunner, cold_copies
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import GEMM_OPS, TensorSig, Unit

T = DimLabel("T", Label.REQUEST)


def c(v):
    return DimLabel(v, Label.CONFIG)


def sig(*dims, dtype="float32"):
    return TensorSig(tuple(dims), dtype)


LINEAR = Unit("linear", (sig(T, c(64)), sig(c(32), c(64))), (sig(T, c(32)),))
MM = Unit("mm", (sig(T, c(64)), sig(c(64), c(32))), (sig(T, c(32)),))
ADDMM = Unit("addmm", (sig(c(32)), sig(T, c(64)), sig(c(64), c(32))), (sig(T, c(32)),))
BMM = Unit("bmm", (sig(c(4), T, c(64)), sig(c(4), c(64), c(32))), (sig(c(4), T, c(32)),))


def test_every_matrix_product_is_its_own_unit_and_2d_ones_join_the_gemm_family():
    assert GEMM_OPS <= ANCHOR_OPS
    assert all(is_gemm(u) for u in (LINEAR, MM, ADDMM))
    assert not is_gemm(BMM)  # batched: no single (M, K, N)
    assert gemm_shape(ADDMM) == ("T", 64, 32) == gemm_shape(MM) == gemm_shape(LINEAR)


@pytest.mark.parametrize("unit,batch", [(LINEAR, 1), (MM, 1), (ADDMM, 1), (BMM, 4)])
def test_gemm_cost_counts_2mnk_with_the_bias_first_and_the_batch_once(unit, batch):
    flops, nbytes = flops_bytes(unit, {"T": 16})
    assert flops == 2.0 * batch * 16 * 64 * 32
    assert nbytes == 4 * sum(batch * n for n in (16 * 64, 64 * 32, 16 * 32)) + (
        4 * 32 if unit is ADDMM else 0)


@pytest.mark.parametrize("unit", [LINEAR, MM, ADDMM, BMM])
def test_runner_calls_each_matrix_product_with_its_own_operand_order(unit):
    out = StatelessRunner(unit, "transformers", "cpu").prepare({"T": 8})()
    want = [8 if d is T else d.value_or_expr for d in unit.outputs[0].dims]
    assert list(out.shape) == want


def test_itemsize_comes_from_torch_under_any_spelling():
    assert [itemsize(d) for d in ("bfloat16", "torch.float32", "half", "int64", "fp8")] == \
        [2, 4, 2, 8, 1]
    assert itemsize("float8_e5m2") == torch.float8_e5m2.itemsize
    with pytest.raises(ValueError, match="'float3'"):
        itemsize("float3")


def test_cold_copies_together_span_four_cpu_last_level_caches():
    span = 4 * cache_bytes("cpu")
    assert cold_span("cpu") == span
    for nbytes in (1000, span // 3, span, 4 * span):
        n = copies_to_span(nbytes, "cpu", most=10**9)
        assert n * nbytes >= span and (n == 1 or (n - 1) * nbytes < span)
    assert copies_to_span(1, "cpu", most=16) == 16
    # a unit's weight set: LINEAR's float32 [32, 64] weight, 8 KiB
    assert cold_copies(LINEAR, {"T": 8}, "cpu") == min(MAX_WEIGHT_COPIES, -(-span // (32 * 64 * 4)))
    # a SmolLM2 decode's o_proj (bf16 [576, 576], 648 KiB) rotates through enough copies to
    # leave the cache, as the 30 layers' weights a real forward streams between its calls do
    o_proj = Unit("linear", (sig(T, c(576), dtype="bfloat16"), sig(c(576), c(576), dtype="bfloat16")),
                  (sig(T, c(576), dtype="bfloat16"),))
    assert cold_copies(o_proj, {"T": 1}, "cpu") * 576 * 576 * 2 >= span or \
        cold_copies(o_proj, {"T": 1}, "cpu") == MAX_WEIGHT_COPIES


def test_a_weight_twice_the_cpu_cache_is_rotated_with_a_second_copy_while_a_gpu_flushes_twice_its_l2(monkeypatch):
    # a victim L3 (AMD Zen) keeps part of a weight re-read on every call: one set of twice
    # the cache timed Llama-3.2-1B's gate_up at 0.72x its rotated time
    monkeypatch.setattr(env_mod, "cache_bytes", lambda device: 32 * 2**20)
    assert copies_to_span(64 * 2**20, "cpu", most=1024) == 2
    assert copies_to_span(32 * 2**20, "cpu", most=1024) == 4
    assert copies_to_span(64 * 2**20, "cuda:0", most=1024) == 1
    assert cold_span("cuda") == 2 * 32 * 2**20


def test_cold_weight_copies_serve_every_point_and_the_rotation_goes_on_across_points(monkeypatch):
    monkeypatch.setattr(runners, "cold_copies", lambda unit, values, device: 3)
    r = StatelessRunner(LINEAR, "transformers", "cpu", cold=True)
    used = []
    real = runners.gemm

    def spy(engine, device, op, ins, linear=None):
        call = real(engine, device, op, ins, linear)
        return lambda: used.append(ins[1]) or call()
    monkeypatch.setattr(runners, "gemm", spy)
    first = r.prepare({"T": 8})
    first(), first()
    weights = list(r._sets)
    second = r.prepare({"T": 16})
    second()
    assert r._sets == weights   # the same copies: built once, not per point
    # the third call, whatever its point, reads the copy the first two did not
    assert used[2] is weights[2][1] and used[0] is weights[0][1]
    r.release()
    assert r._sets == [] and r._turn == 0


def test_runners_drop_a_units_cold_copies_when_the_sweep_moves_on():
    from dooly.env import Environment
    from dooly.profile.grid import GridLimits
    from dooly.profile.sweep_units import Runners
    env = Environment("cpu0", "cpu", "transformers", "0", "sdpa", "float32", cache="cold")
    rs = Runners(env, GridLimits())
    rs.prepare(LINEAR, {"T": 8})()
    held = rs._runners[LINEAR.key]
    assert held._sets
    rs.prepare(MM, {"T": 8})()
    assert not held._sets


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_cache_is_the_devices_l2():
    props = torch.cuda.get_device_properties(0)
    assert cache_bytes("cuda") == props.L2_cache_size > 0
