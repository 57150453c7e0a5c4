"""CPU timing on a shared host: samples during which a timed thread was preempted are set
aside, or (when none was left alone) counted by the CPU time the threads ran, so a sweep
measures the same time whatever its neighbours do."""
import itertools
import time

from dooly.profile import timing


def _spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


def _host(monkeypatch, preempted: callable):
    """A call that works 0.3 ms on one thread; when `preempted(i)` gives n > 0, another
    process takes its core n times (off-CPU time, and the involuntary switches grow)."""
    monkeypatch.setattr(timing.torch, "get_num_threads", lambda: 1)
    count = itertools.count()
    switches = [0]
    monkeypatch.setattr(timing, "_preemptions", lambda: switches[0])

    def fn():
        n = preempted(next(count))
        _spin(0.3)
        if n:
            switches[0] += n
            time.sleep(0.002 * n)
    return fn


def test_preempted_samples_are_set_aside(monkeypatch):
    st = timing.time_cpu(_host(monkeypatch, lambda i: i % 2), warmup=0, repeats=9)
    assert st.median_ms < 1.0 and st.outliers >= 8   # 9 clean samples kept (less any beyond 3 MADs)


def test_a_call_never_left_alone_counts_the_cpu_time_it_ran(monkeypatch):
    st = timing.time_cpu(_host(monkeypatch, lambda i: 1), warmup=0, repeats=5, budget_s=0.05)
    assert st.median_ms < 1.0 and st.samples >= 3   # its wall time was over 2 ms


def test_under_a_busy_neighbour_the_least_preempted_samples_count(monkeypatch):
    st = timing.time_cpu(_host(monkeypatch, lambda i: 1 + (i % 3) * 4), warmup=0, repeats=5, budget_s=0.2)
    assert st.median_ms < 1.0 and st.outliers > 0
