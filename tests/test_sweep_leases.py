"""Sweepers sharing one DB: a unit another live sweeper holds is skipped and come back
to; two concurrent `dooly sweep` processes measure each point once and end with the
same rows as one sweep."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, config
from dooly.db import Store
from dooly.profile import sweep_units as su
from dooly.profile.sweep import SweepSummary
from dooly.profile.grid import GridLimits
from test_db import linear_unit, make_env

LIM = GridLimits(max_tokens=16, max_batch=2, max_context=32)
SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")


class FakeRunners:
    def __init__(self):
        self.calls = 0

    def prepare(self, unit, point):
        self.calls += 1
        return lambda: None


def fake_timer(fn):
    fn()
    return SimpleNamespace(median_ms=1.0, p10_ms=1.0, p90_ms=1.0, mean_ms=1.0, std_ms=0.0,
                           samples=5, outliers=0)


def job(store, env):
    return su.SweepJob(store, env, LIM, FakeRunners(), fake_timer, SweepSummary(env.key))


def test_a_unit_held_by_a_live_sweeper_is_left_to_it_then_found_done(tmp_path):
    unit, env = linear_unit(), make_env()
    with Store.open(tmp_path / "m.db") as s:
        s.add_environment(env)
        s.add_unit(unit)
        j = job(s, env)
        assert s.claim(unit.key, env.key, "other-host:1", ttl_s=600)
        assert j.unit(unit.key, unit) is False and j.runners.calls == 0
        other = job(s, env)                      # the other sweeper measures it...
        s.release(unit.key, env.key, "other-host:1")
        assert other.unit(unit.key, unit) is True
        n = other.runners.calls
        assert n == len(su.grid_for(unit, LIM)) > 0
        assert j.unit(unit.key, unit, waited=True) is True   # ...so this one has nothing left
        assert j.runners.calls == 0 and j.summary.units_by_others == [unit.key]
        assert s.lease(unit.key, env.key) is None


def test_a_lapsed_claim_is_taken_over_and_measured(tmp_path):
    unit, env = linear_unit(), make_env()
    with Store.open(tmp_path / "m.db") as s:
        s.add_environment(env)
        s.add_unit(unit)
        assert s.claim(unit.key, env.key, "crashed-host:1", ttl_s=-1)
        j = job(s, env)
        assert j.unit(unit.key, unit) is True
        assert j.runners.calls == len(su.grid_for(unit, LIM))
        assert j.summary.units_measured == [unit.key]
        assert s.lease(unit.key, env.key) is None   # released when done


def test_a_sweeper_that_loses_its_lease_stops_measuring_that_unit(tmp_path, monkeypatch):
    unit, env = linear_unit(), make_env()
    monkeypatch.setattr(su, "LEASE_S", 0.0)        # renew before every point
    with Store.open(tmp_path / "m.db") as s:
        s.add_environment(env)
        s.add_unit(unit)
        j = job(s, env)
        real = j.runners.prepare

        def steal_after_first(u, point):
            if j.runners.calls == 0:               # another sweeper takes the unit over
                s._conn.execute("UPDATE leases SET owner = 'thief:1'")
            return real(u, point)
        j.runners.prepare = steal_after_first
        assert j.unit(unit.key, unit) is False
        assert j.runners.calls == 1
        assert s.lease(unit.key, env.key)[0] == "thief:1"  # not released: not ours


def _sweep(db, out, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "dooly.cli", "sweep", SMOL, "--engine", "transformers", "--db", str(db),
         "--max-tokens", "16", "--max-batch", "2", "--max-context", "32", "--no-recheck",
         "--no-progress", "--json", str(out)], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _rows(db):
    with Store.open(db, readonly=True) as s:
        return sorted((m.unit_key, m.point_json, m.status) for m in s.measurements(status=None))


@pytest.mark.slow
def test_two_concurrent_sweeps_measure_each_point_once_and_match_one_sweep(tmp_path):
    shared, single = tmp_path / "shared.db", tmp_path / "single.db"
    Store.open(shared).close()
    # every write of a measurement row, counted by SQLite itself: an upsert that
    # re-measures a point is an UPDATE, which the row count alone would hide
    con = __import__("sqlite3").connect(shared)
    con.executescript("""
        CREATE TABLE writes (n INTEGER);
        CREATE TRIGGER count_insert AFTER INSERT ON measurements BEGIN INSERT INTO writes VALUES (1); END;
        CREATE TRIGGER count_update AFTER UPDATE ON measurements BEGIN INSERT INTO writes VALUES (1); END;
    """)
    con.close()
    procs = [_sweep(shared, tmp_path / "a.json", tmp_path), _sweep(shared, tmp_path / "b.json", tmp_path),
             _sweep(single, tmp_path / "one.json", tmp_path)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    a, b, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b", "one"))
    rows = _rows(shared)
    print(f"sweeper a: {a}\nsweeper b: {b}\none sweep: {one}\nrows: {len(rows)}")
    assert rows == _rows(single)
    points = lambda s: s["points_measured"] + s["points_failed"]  # noqa: E731
    assert points(a) + points(b) == len(rows) == points(one)
    con = __import__("sqlite3").connect(shared)
    assert con.execute("SELECT COUNT(*) FROM writes").fetchone()[0] == len(rows)
    assert con.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
    con.close()
    # both did part of the work: the units split between them, none measured twice
    assert a["units_measured"] > 0 and b["units_measured"] > 0
    assert a["units_measured"] + b["units_measured"] == one["units_measured"]
