"""Compiled unit bodies called without Dynamo guards: the same numbers as eager at every
request size, one token included, from one general trace."""
import torch

from dooly.profile.compiled import DirectCompiled


def _norm_add(x, r, w):   # [T, hidden], [T, hidden], [hidden]
    h = x.float() + r.float()
    v = h.pow(2).mean(-1, keepdim=True)
    return (h * torch.rsqrt(v + 1e-6)).to(x.dtype) * w, h.to(x.dtype)


def _inputs(t):
    return [torch.randn(t, 48), torch.randn(t, 48), torch.randn(48)]


def test_direct_call_matches_eager_at_every_token_count():
    c = DirectCompiled(_norm_add)
    c.compile(_inputs(37), [(0, 0), (1, 0)])
    assert c._direct is not None
    for t in (1, 2, 5, 100):
        ins = _inputs(t)
        got = c.bind(ins)()
        want = _norm_add(*ins)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


def test_one_trace_serves_every_request_size():
    c = DirectCompiled(_norm_add)
    c.compile(_inputs(37), [(0, 0), (1, 0)])
    for t in (1, 3, 64):
        c.bind(_inputs(t))()
    assert len(c._graphs) == 1


def test_body_with_a_graph_break_falls_back_to_guarded_calls():
    def body(x):
        torch._dynamo.graph_break()
        return x * 2
    c = DirectCompiled(body)
    c.compile([torch.randn(37, 4)], [(0, 0)])
    assert c._direct is None
    x = torch.randn(3, 4)
    torch.testing.assert_close(c.bind([x])(), x * 2)


def test_every_body_in_a_process_is_compiled_past_dynamos_recompile_limit():
    """Dynamo stops compiling a code object after `recompile_limit` variants and runs it
    eagerly: a sweep compiles one body per unit, many more than that in one process, and
    each must still be Inductor's kernel (a shared wrapper once timed every unit after the
    eighth as eager ops)."""
    limit = torch._dynamo.config.recompile_limit
    for k in range(limit + 3):
        def body(x, r, w, k=k):
            return _norm_add(x, r, w * (k + 1))
        c = DirectCompiled(body)
        c.compile(_inputs(37), [(0, 0), (1, 0)])
        assert len(c._graphs) == 1 and c._direct is not None, f"body {k} was not compiled"
