"""`dooly sweep ... --ray`: the flag reaches the Ray sweep with its address and worker
count, refused workers and collective units are named on stderr, and a bad address is
a one-line error. The Ray sweep itself is faked here (tests/test_ray_sweep.py runs it
on a real cluster)."""
from __future__ import annotations

import pytest

from conftest import config
from dooly.analyze import Analysis
from dooly.cli import main
from dooly.graph.units import Entry, Inventory
from test_db import linear_unit

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")


@pytest.fixture
def fake(monkeypatch):
    import dooly.analyze
    import dooly.profile.ray_sweep as rs
    calls = {}
    unit = linear_unit(16)
    monkeypatch.setattr(dooly.analyze, "analyze", lambda *a, **k: Analysis("transformers", [
        Inventory("tiny", SMOL, "Tiny", "transformers", "h", {unit.key: Entry(unit, 1)})]))

    def fake_sweep(analysis, db, device, backend, lim, threads, progress, recheck, address, workers, retry_failed):
        calls.update(address=address, workers=workers, threads=threads, recheck=recheck, retry_failed=retry_failed)
        s = rs.RaySweepSummary("env0", units_measured=[unit.key], points_measured=3,
                               workers=["127.0.0.1:11 cores [0]"],
                               workers_refused=["127.0.0.1:12 (box): environment differs: device_name 'x' here"],
                               units_collective=["all_reduce-1"])
        return s
    monkeypatch.setattr(rs, "ray_sweep", fake_sweep)
    return calls


@pytest.mark.parametrize("flags, address", [(["--ray"], None), (["--ray", "auto"], "auto"),
                                            (["--ray", "127.0.0.1:6379"], "127.0.0.1:6379")])
def test_ray_flag_reaches_the_ray_sweep(fake, tmp_path, capsys, flags, address):
    db = str(tmp_path / "r.db")
    assert main(["sweep", SMOL, "--db", db, "--threads", "1", "--no-progress", "--no-recheck",
                 "--ray-workers", "2", "--retry-failed"] + flags) == 0
    assert fake == {"address": address, "workers": 2, "threads": 1, "recheck": False, "retry_failed": True}
    out, err = capsys.readouterr()
    assert "1 units measured" in out and "ray: 1 worker(s)" in out
    assert "refused Ray worker 127.0.0.1:12" in err and "collective unit" in err


@pytest.mark.parametrize("bad", ["not an address", "host:port", "fixtures/x.json"])
def test_a_bad_ray_address_is_one_line(bad, tmp_path, capsys):
    assert main(["sweep", SMOL, "--db", str(tmp_path / "x.db"), "--ray", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ray" in err
