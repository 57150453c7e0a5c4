"""The real-engine step recorder's counters (dooly.engines.vllm_probe): what each recorded
step says about the process besides its time."""
import mmap

from dooly.engines.vllm_probe import _rusage


def test_a_step_counts_the_page_faults_a_fresh_buffer_makes():
    """Writing a fresh 16 MiB mapping faults its pages in (at least one per 2 MiB, where huge
    pages serve it); an interval that writes no fresh memory counts fewer, which is what
    tells a step that allocates anew from one that reuses its buffers."""
    size = 16 << 20
    _, before = _rusage()
    buf = mmap.mmap(-1, size)
    for off in range(0, size, mmap.PAGESIZE):
        buf[off] = 1
    _, after = _rusage()
    buf.close()
    assert after - before >= size // (2 << 20)
    _, again = _rusage()
    assert _rusage()[1] - again < after - before
