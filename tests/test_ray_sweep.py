"""Distributed sweeps on a real local Ray cluster (a head node and a second node, one
CPU each, on 127.0.0.1): the rows equal a single-process sweep's, a worker killed mid-
sweep loses only its point in flight and a rerun leaves every row, a worker whose
environment differs is refused. Tiny synthetic GEMM units, timed for real."""
from __future__ import annotations

import os
import signal
import sys

import pytest

from dooly.profile.ray_cluster import loopback_only  # noqa: E402

loopback_only()  # the test cluster and everything it starts listen on 127.0.0.1 only
pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

from dooly.analyze import Analysis  # noqa: E402
from dooly.cli import main  # noqa: E402
from dooly.db import Store  # noqa: E402
from dooly.graph.units import Entry, Inventory  # noqa: E402
from dooly.profile.grid import GridLimits  # noqa: E402
from dooly.profile.ray_sweep import ray_sweep  # noqa: E402
from dooly.profile.sweep import sweep  # noqa: E402
from dooly.profile.sweep_units import grid_for  # noqa: E402
from dooly.symbolic.labels import DimLabel, Label  # noqa: E402
from dooly.unit import TensorSig, Unit  # noqa: E402
from test_db import T, linear_unit  # noqa: E402

# a head node and a second node each start a raylet and their workers import torch
pytestmark = pytest.mark.slow
LIM = GridLimits(max_tokens=16, max_batch=2, max_context=32)
# the last unit's op does not exist: each of its points fails on the worker, with its reason
BOGUS = Unit("aten.no_such_op.default", inputs=(TensorSig((T, DimLabel(8, Label.CONFIG)), "bfloat16"),),
             outputs=(TensorSig((T, DimLabel(8, Label.CONFIG)), "bfloat16"),))
UNITS = [linear_unit(n) for n in (16, 24, 32, 40)] + [BOGUS]


def tiny() -> Analysis:
    inv = Inventory("tiny", "tiny.json", "TinyForCausalLM", "transformers", "tiny-hash",
                    {u.key: Entry(u, 2) for u in UNITS})
    return Analysis("transformers", [inv])


def rows(db: str) -> list[tuple]:
    with Store.open(db, readonly=True) as s:
        return sorted((m.unit_key, m.env_key, m.point_json, m.status) for m in s.measurements(status=None))


def _node(**over) -> dict:
    return dict(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=80 * 2**20, **over)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args=_node(include_dashboard=False))
    second = c.add_node(**_node())
    yield c, second
    c.shutdown()


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> list[tuple]:
    db = str(tmp_path_factory.mktemp("one") / "one.db")
    sweep(tiny(), db, lim=LIM, threads=1, recheck=False)
    return rows(db)


def test_rows_equal_a_single_process_sweep(cluster, single, tmp_path):
    db = str(tmp_path / "ray.db")
    seen = []
    s = ray_sweep(tiny(), db, lim=LIM, threads=1, address=cluster[0].address, progress=seen.append)
    assert len(s.workers) == 2 and not s.workers_refused and not s.workers_lost, s
    assert all("cores" in w for w in s.workers)
    cores = [w.split("cores ")[1] for w in s.workers]
    assert len(set(cores)) == 2 or os.cpu_count() < 2   # two timed workers, two cores
    assert rows(db) == single
    assert s.points_measured + s.points_failed == len(single) == sum(len(grid_for(u, LIM)) for u in UNITS)
    assert s.units_failed == [BOGUS.key] and s.points_failed == len(grid_for(BOGUS, LIM))
    with Store.open(db, readonly=True) as st:
        assert all("no_such_op" in m.reason for m in st.measurements(status="failed"))
    assert s.recheck_seconds > 0                          # the CPU's second pass ran on the workers
    last = [p for p in seen if p.phase == "measure"][-1]
    assert (last.units_done, last.points_done, last.failed) == (len(UNITS), len(single), s.points_failed)
    with Store.open(db, readonly=True) as st:
        assert all(st.lease(u.key, s.env_key) is None for u in UNITS)


def test_a_worker_killed_mid_sweep_loses_only_points_in_flight_and_a_rerun_completes(cluster, single, tmp_path):
    db = str(tmp_path / "kill.db")
    killed = {}

    def kill_one(p):
        if p.points_done == 3 and not killed and len(p.workers) == 2:
            name, pid = sorted(p.workers.items())[0]
            os.kill(pid, signal.SIGKILL)                    # the worker's process, by its id
            killed[name] = pid
    s = ray_sweep(tiny(), db, lim=LIM, threads=1, address=cluster[0].address, recheck=False,
                  progress=kill_one)
    assert killed and len(s.workers_lost) == 1 and list(killed)[0] in s.workers_lost[0]
    before = rows(db)
    assert before == single                 # its unmeasured points went to the other worker
    with Store.open(db) as st:                             # one unit's rows gone: a rerun redoes them
        st.replace_measurements(UNITS[0].key, s.env_key, [])
    again = ray_sweep(tiny(), db, lim=LIM, threads=1, address=cluster[0].address, recheck=False)
    assert rows(db) == single                               # every row, each once
    assert again.points_measured + again.points_failed == len(grid_for(UNITS[0], LIM))  # only the missing


def test_a_worker_in_another_environment_is_refused(cluster, single, tmp_path):
    c, second = cluster
    site = tmp_path / "site"
    site.mkdir()
    # every Python process of this node sees another CPU model, as another host would
    (site / "sitecustomize.py").write_text("import dooly.env\n"
                                           "dooly.env.host_cpu_name = lambda: 'Another CPU 9000'\n")
    c.remove_node(second)
    path = os.pathsep.join([str(site)] + [p for p in sys.path if p])
    c.add_node(**_node(env_vars={"PYTHONPATH": path}))
    db = str(tmp_path / "mixed.db")
    s = ray_sweep(tiny(), db, lim=LIM, threads=1, address=c.address, recheck=False)
    assert len(s.workers) == 1 and len(s.workers_refused) == 1, s
    assert "device_name 'Another CPU 9000' here" in s.workers_refused[0]
    assert rows(db) == single                               # the one matching worker measured all


def test_bad_ray_flags_are_one_line_errors(capsys, tmp_path):
    cfg = str(tmp_path / "c.json")
    assert main(["sweep", "--db", str(tmp_path / "x.db"), "--ray", cfg, cfg]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--ray" in err and "after the configs" in err
