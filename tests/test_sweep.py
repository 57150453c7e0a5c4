"""Sweeps with the transformers engine on this CPU: small grids, real torch calls."""
import json

import pytest

from conftest import config
from dooly.cli import main
from dooly.db import Store
from dooly.profile.grid import GridLimits
from dooly.analyze import analyze
from dooly.profile.sweep import sweep

# every test here sweeps SmolLM2 for real, or uses the module's sweep: tens of seconds each
pytestmark = pytest.mark.slow
LIM = GridLimits(max_tokens=16, max_batch=2, max_context=32)
SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")


def _rows(db):
    with Store.open(db) as s:
        return sorted((m.unit_key, m.point_json, m.status) for m in s.measurements(status=None))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("sweep") / "a.db")
    first = sweep(analyze([SMOL], "transformers"), db, lim=LIM)
    return db, first


def test_sweep_measures_every_unit_then_nothing(swept):
    db, first = swept
    assert first.units_measured and first.points_measured > 0
    with Store.open(db) as s:   # the host state beside the points: at the start and the end
        assert len(s.host_probes(first.env_key, source="sweep")) >= 2
    again = sweep(analyze([SMOL], "transformers"), db, lim=LIM)
    assert again.units_measured == [] and len(again.units_reused) == len(first.units_measured)



def test_a_sweep_on_a_host_unlike_the_dbs_says_so(swept, tmp_path, capsys):
    """The environment key (CPU name, threads, engine) is the same on two VMs whose cores
    differ 2x: the reference workload tells them apart, and the sweep says so on stderr."""
    import shutil
    import sqlite3
    db = str(tmp_path / "other.db")
    shutil.copy(swept[0], db)
    with sqlite3.connect(db) as c:   # the DB's sweep as if taken on a host 3x slower
        c.execute("UPDATE host_probes SET gemm_ms = 3 * gemm_ms, stream_ms = 3 * stream_ms")
    again = sweep(analyze([SMOL], "transformers"), db, lim=LIM)
    assert again.units_measured == [] and again.host_change["gemm"] < 1 / 1.5
    assert main(["sweep", SMOL, "--engine", "transformers", "--db", db, "--max-tokens", "16",
                 "--max-batch", "2", "--max-context", "32"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "reference workload" in line]
    assert len(warned) == 1 and db in warned[0] and "another host" in warned[0]

def test_interrupted_sweep_resumes_to_the_same_rows(swept, tmp_path, monkeypatch):
    db_full, _ = swept
    db = str(tmp_path / "b.db")
    import dooly.profile.sweep_units as su
    real, calls = su.measure_point, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the sweep
        return real(*a, **k)
    monkeypatch.setattr(su, "measure_point", flaky)
    s = sweep(analyze([SMOL], "transformers"), db, lim=LIM)
    assert s.interrupted
    monkeypatch.setattr(su, "measure_point", real)
    sweep(analyze([SMOL], "transformers"), db, lim=LIM)
    strip = lambda rows: sorted((k, p) for k, p, _ in rows)  # noqa: E731
    assert strip(_rows(db)) == strip(_rows(db_full))


def test_failing_point_is_stored_as_failed_and_sweep_goes_on(tmp_path, monkeypatch):
    import dooly.profile.runners as mat
    real = mat.StatelessRunner.prepare

    def boom(self, point):
        if self.unit.op == "linear" and point.get("Q") == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(self, point)
    monkeypatch.setattr(mat.StatelessRunner, "prepare", boom)
    db = str(tmp_path / "c.db")
    s = sweep(analyze([SMOL], "transformers"), db, lim=LIM)
    assert s.points_failed > 0 and s.points_measured > 0
    failed = [r for r in _rows(db) if r[2] == "failed"]
    assert failed
    with Store.open(db) as st:
        bad = [m for m in st.measurements(status="failed")]
    assert any("out of memory" in m.reason for m in bad)
    assert not any("cannot rebuild" in m.reason for m in bad)
    monkeypatch.setattr(mat.StatelessRunner, "prepare", real)   # an upgrade that runs them
    again = sweep(analyze([SMOL], "transformers"), db, lim=LIM)
    assert again.points_measured == 0   # a resumed sweep skips the failed points...
    again = sweep(analyze([SMOL], "transformers"), db, lim=LIM, retry_failed=True)
    assert again.points_retried == len(failed) == again.points_measured and again.points_failed == 0
    assert [r for r in _rows(db) if r[2] == "failed"] == []   # ...unless told to try them again


def test_analyze_with_db_marks_hits(swept, tmp_path, capsys):
    db, _ = swept
    out = tmp_path / "a.json"
    assert main(["analyze", SMOL, "--engine", "transformers", "--db", db, "--json", str(out),
                 "--quiet"]) == 0
    plan = json.loads(out.read_text())["plan"]
    assert plan["missing_units"] == [] and plan["remaining_cost_s"] == 0


def test_predict_after_sweep_gives_positive_breakdown(swept):
    from dooly.predict import Predictor
    db, _ = swept
    p = Predictor.load(SMOL, db, "transformers")
    r = p.predict([(8, 0), (4, 0)])
    assert r.units_ms > 0 and len(r.breakdown) == len(p.counts)


def _sweep_into(db):
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from dooly.profile.grid import GridLimits as GL
    from dooly.analyze import analyze as an
    from dooly.profile.sweep import sweep as sw
    s = sw(an([SMOL], "transformers"), db, lim=GL(max_tokens=16, max_batch=2, max_context=32))
    return s.points_measured + s.points_failed


def test_two_sweeps_into_one_db_both_finish_with_all_rows(swept, tmp_path):
    import multiprocessing as mp
    db_full, _ = swept
    db = str(tmp_path / "shared.db")
    with mp.get_context("spawn").Pool(2) as pool:
        done = pool.map(_sweep_into, [db, db])
    assert all(n > 0 for n in done)
    strip = lambda rows: sorted((k, p) for k, p, _ in rows)  # noqa: E731
    assert strip(_rows(db)) == strip(_rows(db_full))


def test_sigint_mid_sweep_then_rerun_matches_uninterrupted(swept, tmp_path):
    """A real Ctrl-C (SIGINT) to `dooly sweep`: nothing measured is lost, and a rerun
    ends with the same rows as an uninterrupted sweep."""
    import signal
    import subprocess
    import sys
    import time
    db_full, _ = swept
    db = str(tmp_path / "sig.db")
    cmd = [sys.executable, "-m", "dooly.cli", "sweep", SMOL, "--engine", "transformers", "--db", db,
           "--max-tokens", "16", "--max-batch", "2", "--max-context", "32", "--no-progress"]
    def ctrl_c_reaches_it():
        # a library an earlier test loaded may have left SIGINT ignored or blocked in this
        # process, and a child inherits both: the sweep must see the Ctrl-C a user sends
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=ctrl_c_reaches_it)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with Store.open(db, create=False) as s:
                if s.stats()["measurements"] >= 10:
                    break
        except Exception:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    with Store.open(db) as s:
        partial = s.stats()["measurements"]
    assert 10 <= partial < len(_rows(db_full))  # stopped in the middle
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    strip = lambda rows: sorted((k, p) for k, p, _ in rows)  # noqa: E731
    assert strip(_rows(db)) == strip(_rows(db_full))


def test_second_pass_keeps_each_points_faster_median(tmp_path, monkeypatch):
    import dataclasses
    import dooly.profile.sweep_units as su
    db = str(tmp_path / "r.db")
    real, seen = su.measure_point, {}

    def burst_then_quiet(runners, timer, unit, point, env):
        m = real(runners, timer, unit, point, env)
        k = (unit.key, json.dumps(point, sort_keys=True))
        seen[k] = seen.get(k, 0) + 1
        if m.status == "ok" and seen[k] == 1:   # another process held the cores
            return dataclasses.replace(m, median_ms=m.median_ms + 1000.0)
        return m
    monkeypatch.setattr(su, "measure_point", burst_then_quiet)
    s = sweep(analyze([SMOL], "transformers"), db, lim=LIM, recheck=True)
    assert s.points_rechecked_faster == s.points_measured > 0
    with Store.open(db) as st:
        assert all(m.median_ms < 1000.0 for m in st.measurements())
