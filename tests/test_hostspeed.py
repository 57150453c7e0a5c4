"""The host's speed read on a fixed reference workload beside sweeps and engine runs."""
import pytest

from dooly.db import Store
from dooly.hostspeed import HostProbe, Reading, change_warning, host_factor, stored_change


def test_a_reading_times_both_parts_of_the_reference_workload():
    r = HostProbe(repeats=3).read()
    assert r.gemm_ms > 0 and r.stream_ms > 0 and r.timestamp > 0


def test_a_probe_reads_again_only_after_its_interval():
    probe = HostProbe(every_s=3600, repeats=1)
    probe.read(mark=False)   # a look at the host (the sweep's check) puts off no reading
    assert probe.maybe() is not None
    assert probe.maybe() is None


def test_a_reading_must_be_positive():
    with pytest.raises(ValueError, match="stream_ms"):
        Reading(1.0, 0.3, 0.0)


def test_host_factor_is_the_slowdown_of_both_parts_against_the_reference():
    ref = [Reading(t, 1.0, 2.0) for t in range(5)]
    slow = [Reading(t, 1.2, 2.0) for t in range(5)] + [Reading(9, 50.0, 90.0)]  # one burst: the median ignores it
    assert host_factor(slow, ref) == pytest.approx((1.2 + 1.0) / 2)
    assert host_factor([], ref) == 1.0


def test_host_probes_are_stored_filtered_and_merged(tmp_path):
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    with Store.open(a) as s:
        s.add_host_probe("env", 2.0, 0.3, 0.9, "sweep")
        s.add_host_probe("env", 1.0, 0.4, 1.0, "calibrate")
        assert s.host_probes("env") == [(1.0, 0.4, 1.0, "calibrate"), (2.0, 0.3, 0.9, "sweep")]
        assert s.host_probes("env", source="sweep") == [(2.0, 0.3, 0.9, "sweep")]
        assert s.host_probes("other") == []
    with Store.open(b) as s:
        s.merge_from(a)
        s.merge_from(a)   # a second merge adds nothing
        assert len(s.host_probes()) == 2


def test_a_host_unlike_the_environments_sweep_is_named_part_by_part(tmp_path):
    # a fresh VM with the environment's CPU name and threads, its GEMM twice as fast
    with Store.open(str(tmp_path / "a.db")) as s:
        for t in range(3):
            s.add_host_probe("env", float(t), 0.72, 1.7, "sweep")
        s.add_host_probe("env", 9.0, 0.1, 0.1, "calibrate")   # only the sweep's readings are the reference
        assert stored_change(s, "env", [Reading(10.0, 0.36, 1.8)]) == pytest.approx({"gemm": 0.5, "stream": 1.8 / 1.7})
        assert stored_change(s, "env", [Reading(10.0, 0.8, 2.0)]) is None     # drift within the bound
        assert stored_change(s, "env", [Reading(10.0, 0.72, 5.1)]) is None    # the stream part alone: noise
        assert stored_change(s, "env", []) is None
        assert stored_change(s, "other", [Reading(10.0, 0.36, 1.8)]) is None  # nothing stored to compare with
    line = change_warning("env", "a.db", {"gemm": 0.5, "stream": 1.06}, "its points are another host's")
    assert "\n" not in line and "a.db" in line and "gemm 0.50x" in line and "env" in line
