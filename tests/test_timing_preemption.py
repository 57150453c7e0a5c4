"""CPU timing on a shared host: samples during which a timed thread was preempted are set
aside, so a sweep measures the same time whatever its neighbours do."""
import itertools
import time

from dooly.profile import timing


def _host(monkeypatch, preempted_every: int):
    """Every n-th call is preempted by a neighbour: it runs 20x longer and the process's
    involuntary context switches grow."""
    count = itertools.count()
    switches = [0]
    monkeypatch.setattr(timing, "_preemptions", lambda: switches[0])

    def fn():
        if preempted_every and next(count) % preempted_every == 0:
            switches[0] += 1
            time.sleep(0.004)
        else:
            time.sleep(0.0002)
    return fn


def test_preempted_samples_are_set_aside(monkeypatch):
    st = timing.time_cpu(_host(monkeypatch, preempted_every=2), warmup=0, repeats=9)
    # summarize may also drop a jittered unpreempted sample as an outlier
    assert st.median_ms < 1.0 and st.samples >= 7 and st.outliers >= 8


def test_a_host_preempted_throughout_keeps_every_sample(monkeypatch):
    st = timing.time_cpu(_host(monkeypatch, preempted_every=1), warmup=0, repeats=5, budget_s=0.05)
    assert st.median_ms > 3.0 and st.samples >= 3
