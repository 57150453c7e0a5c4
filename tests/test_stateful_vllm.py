"""vLLM's real attention + KV-cache write through vLLM's own setup (CPU_ATTN here).
vLLM's environment is set by conftest (dooly.engines.set_vllm_environ)."""
import pytest

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from dooly.engines.vllm_attention import VllmAttentionRunner, order_batch  # noqa: E402

BATCHES = {"prefill": [(32, 0), (16, 0)], "decode": [(1, 64)] * 4,
           "mixed": [(1, 40), (1, 40), (24, 0)]}


@pytest.fixture(scope="module")
def runner():
    return VllmAttentionRunner(4, 2, 64, max_context=512, max_batch=8)


@pytest.fixture(scope="module")
def windowed():
    return VllmAttentionRunner(4, 2, 64, sliding_window=48, max_context=512, max_batch=8)


def _reference(q, k, v, context, window, group):
    """Causal (optionally windowed) GQA attention of q at positions context.. over k/v."""
    s = k.shape[0]
    kk = k.float().repeat_interleave(group, 1)
    vv = v.float().repeat_interleave(group, 1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), kk) * q.shape[-1] ** -0.5
    qp = torch.arange(context, s)[:, None]
    kp = torch.arange(s)[None]
    mask = kp <= qp
    if window:
        mask &= kp > qp - window
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", probs, vv)


def test_backend_and_cache(runner):
    assert runner.backend_name == "CPU_ATTN"
    assert runner.kv_cache.shape[0] == runner.num_blocks > 1
    assert runner.layer.kv_cache is runner.kv_cache


@pytest.mark.parametrize("kind", list(BATCHES))
def test_step_and_parts(runner, kind):
    parts = runner.prepare_parts(BATCHES[kind])
    assert set(parts) >= {"kv_update", "attention", "step"}
    for name in ("kv_update", "attention", "step"):
        fn = parts[name]
        out = fn.batch["output"]
        out.zero_()
        for _ in range(2):
            fn()
        if name != "kv_update":
            assert out.shape == (sum(q for q, _ in BATCHES[kind]), 4, 64)
            assert torch.isfinite(out.float()).all()
            assert out.float().abs().sum() > 0
    step = runner.prepare(BATCHES[kind])
    out = step()
    assert torch.isfinite(out.float()).all() and out.float().abs().sum() > 0


@pytest.mark.parametrize("window", [0, 48])
def test_matches_reference(runner, windowed, window):
    r = windowed if window else runner
    f = r.prepare([(100, 0), (30, 0)])
    out = f().float()
    b = f.batch
    for lo, hi in ((0, 100), (100, 130)):
        ref = _reference(b["q"][lo:hi], b["k"][lo:hi], b["v"][lo:hi], 0, window, 2)
        assert (out[lo:hi] - ref).abs().max() < 0.05
    # A decode over the context that a prefill wrote (same seeded block ids).
    pre = r.prepare([(100, 0)])
    pre()
    dec = r.prepare([(1, 100)])
    assert torch.equal(dec.batch["metadata"].block_table, pre.batch["metadata"].block_table)
    out = dec().float()
    k = torch.cat([pre.batch["k"], dec.batch["k"]])
    v = torch.cat([pre.batch["v"], dec.batch["v"]])
    assert (out - _reference(dec.batch["q"], k, v, 100, window, 2)).abs().max() < 0.05


def test_sliding_window_runner(windowed):
    assert windowed.layer.impl.sliding_window == 48
    assert type(windowed.spec).__name__ == "SlidingWindowSpec"
    for seqs in BATCHES.values():
        out = windowed.prepare(seqs)()
        assert torch.isfinite(out.float()).all() and out.float().abs().sum() > 0


def test_order_batch():
    seqs = [(24, 0), (1, 40), (3, 10), (1, 8)]
    assert order_batch(seqs, None) == seqs
    assert order_batch(seqs, 1) == [(1, 40), (1, 8), (24, 0), (3, 10)]


def test_rejects_oversized_batch(runner):
    with pytest.raises(ValueError):
        runner.prepare([(1, 512 * 8)] * 64)


def test_cold_kv_calls_read_different_blocks():
    cold = VllmAttentionRunner(4, 2, 64, max_context=512, max_batch=8, cold_kv=True)
    seen = []
    real_ctx = cold._ctx

    def spy(T, meta, slot_mapping):
        seen.append(meta.block_table.clone() if hasattr(meta, "block_table") else slot_mapping.clone())
        return real_ctx(T, meta, slot_mapping)
    cold._ctx = spy
    fn = cold.prepare_parts([(1, 300)] * 2)["attention"]
    assert cold._copies([(1, 300)] * 2) > 1
    fn()
    fn()
    assert not torch.equal(seen[0], seen[1])
    # the next point of the sweep, the same batch: its calls read blocks of their own, not
    # the ones the last point's calls may have left in the cache
    cold.prepare_parts([(1, 300)] * 2)["attention"]()
    assert not any(torch.equal(seen[-1], s) for s in seen[:-1])
