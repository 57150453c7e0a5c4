"""The store on both backends, one test module: every test runs on an SQLite file and on
a PostgreSQL database (a real server on 127.0.0.1, started by `pg_server`): schema
round trip, upserts, failed points, merges across backends, migrations from an older
schema, leases (also under concurrent claimers), row checks, read-only opens, the
`dooly db` commands and a sweep's job."""
from __future__ import annotations

import importlib.util
import json
import multiprocessing

import pytest

from dooly.cli import main
from dooly.db import SCHEMA_VERSION, Store, schema
from dooly.env import Measurement
from dooly.errors import DoolyInputError
from pg_server import any_db, new_pg_db, pg_server, pg_url, raw_sql  # noqa: F401 (fixtures)
from test_db import fused_unit, linear_unit, make_env, ok, seeded


def test_round_trip_keeps_every_table(any_db):
    env, lin, fused = make_env(), linear_unit(), fused_unit()
    m = Measurement(lin.key, env.key, {"seqs": [[512, 512], [1, 1024]]}, median_ms=2.5, p10_ms=2.0,
                    p90_ms=3.0, mean_ms=2.6, std_ms=0.2, samples=30, outliers=2, timestamp=1.7e9 + 0.123456)
    with Store.open(any_db) as s:
        assert s.add_environment(env) == env.key
        s.add_environment(env)
        s.add_unit(lin)
        s.add_unit(fused)
        s.add_unit(lin)
        s.add_measurement(m)
        s.set_inventory("cfg1", "hf", "tiny", {lin.key: 22, fused.key: 2})
        s.put_fits([{"unit_key": lin.key, "env_key": env.key, "fingerprint": "f1", "model": {"a": [1, 2]}}])
        s.put_fits([{"unit_key": lin.key, "env_key": env.key, "fingerprint": "f2", "model": {"a": [3]}}])
    with Store.open(any_db, readonly=True) as s:
        assert s.environments() == [env]
        assert s.get_unit(fused.key).graph == fused.graph and s.get_unit("nope") is None
        assert sorted(u.key for u in s.units()) == sorted([lin.key, fused.key])
        assert s.measurements() == [m]  # a float timestamp keeps every digit (no 32-bit REAL)
        assert s.inventory("cfg1", "hf") == {lin.key: 22, fused.key: 2}
        fits = s.fits(env.key)
        assert fits[lin.key]["fingerprint"] == "f2" and fits[lin.key]["model"] == {"a": [3]}
        assert s.find_environment(device_name="test-cpu", threads=8) == [env]
        assert s.summary() == [{"unit_key": k, "op": op, "env_key": e, "ok": n, "failed": 0}
                               for k, op, e, n in sorted([(lin.key, lin.op, env.key, 1),
                                                          (fused.key, fused.op, None, 0)],
                                                         key=lambda r: (r[1], r[0]))]


def test_upsert_failed_points_and_resume(any_db):
    unit, env = seeded(any_db, points=(1, 2))
    with Store.open(any_db) as s:
        s.add_measurement(ok(unit, env, 2, ms=9.0, ts=200.0))
        s.add_measurement(Measurement(unit.key, env.key, {"T": 3}, status="failed", reason="oom"))
        assert s.stats() == {"environments": 1, "units": 1, "measurements": 2, "failed": 1}
        assert [m.median_ms for m in s.measurements(unit.key, env.key)] == [1.0, 9.0]
        assert s.has_point(unit.key, env.key, {"T": 3}) and not s.has_point(unit.key, env.key, {"T": 4})
        assert s.points(unit.key, env.key, status="ok") == {'{"T":1}', '{"T":2}'}
        assert s.units_measured(env.key) == {unit.key}
        with pytest.raises(ValueError, match="add the unit"):
            s.add_measurement(ok(fused_unit(), env, 1))
        s.replace_measurements(unit.key, env.key, [ok(unit, env, 7)])
        assert [m.point for m in s.measurements(unit.key, env.key, status=None)] == [{"T": 7}]


@pytest.mark.parametrize("other_kind", ["sqlite", "postgresql"])
def test_merge_across_backends_keeps_each_row_once_newest_wins(any_db, other_kind, tmp_path, request):
    other = str(tmp_path / "o.db") if other_kind == "sqlite" else request.getfixturevalue("new_pg_db")()
    unit, env = seeded(any_db, points=(1, 2, 4), ts=100.0)
    seeded(other, points=(4, 8), ts=200.0)
    with Store.open(other) as s:
        s.set_inventory("cfg", "hf", "m", {unit.key: 3})
    with Store.open(any_db) as s:
        assert s.merge_from(other) == 2            # T=8 new, T=4 newer
        assert s.merge_from(other) == 0            # nothing twice
        assert s.merge_from(any_db) == 0
        stamps = {m.point_json: m.timestamp for m in s.measurements()}
        assert stamps == {'{"T":1}': 100.0, '{"T":2}': 100.0, '{"T":4}': 200.0, '{"T":8}': 200.0}
        assert s.inventory("cfg", "hf") == {unit.key: 3}


def _make_v1(db: str) -> None:
    """A database as the first release wrote it: schema version 1, no fits or leases."""
    if db.startswith("postgresql://"):
        from dooly.db import postgres
        conn = postgres.connect(db)
        conn.execute("CREATE TABLE dooly_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO dooly_meta VALUES (?, ?), (?, ?)",
                     ("application_id", hex(schema.APPLICATION_ID), "schema_version", "1"))
    else:
        import sqlite3
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
    schema.MIGRATIONS[0](conn)
    env = make_env(cache="warm")  # v1 timed warm: the column v2 adds defaults to it
    cols = ("env_key",) + schema.ENV_COLUMNS[:-1]
    conn.execute(f"INSERT INTO environments ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                 (env.key,) + tuple(getattr(env, c) for c in schema.ENV_COLUMNS[:-1]))
    conn.close()


def test_an_older_schema_is_refused_by_reads_and_migrated_by_writers(any_db, capsys):
    _make_v1(any_db)
    with pytest.raises(DoolyInputError, match="older than this dooly's"):
        Store.open(any_db, readonly=True)
    assert main(["db", "migrate", any_db]) == 0
    assert f"schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    with Store.open(any_db, readonly=True) as s:
        assert s.environments() == [make_env(cache="warm")]
        assert s.fits(make_env(cache="warm").key) == {}
    assert main(["db", "check", any_db]) == 0


def test_empty_and_foreign_databases_are_refused(any_db):
    with pytest.raises(DoolyInputError, match="empty|no such database"):
        Store.open(any_db, create=False)
    raw_sql(any_db, "CREATE TABLE customers (id INTEGER)")
    with pytest.raises(DoolyInputError, match="not a Dooly database"):
        Store.open(any_db)


def test_read_only_open_never_writes(any_db):
    seeded(any_db)
    with Store.open(any_db, readonly=True) as s:
        with pytest.raises(DoolyInputError, match="read-only"):
            s.add_environment(make_env(threads=3))
    with Store.open(any_db, readonly=True) as s:
        assert len(s.environments()) == 1


def test_leases_claim_renew_release(any_db):
    unit, env = seeded(any_db)
    with Store.open(any_db) as s:
        assert s.claim(unit.key, env.key, "host-a:1", ttl_s=600)
        assert not s.claim(unit.key, env.key, "host-b:1")        # a live claim elsewhere
        assert s.claim(unit.key, env.key, "host-a:1")             # our own again
        assert s.renew(unit.key, env.key, "host-a:1") and not s.renew(unit.key, env.key, "host-b:1")
        s.release(unit.key, env.key, "host-b:1")                  # not theirs to release
        assert s.lease(unit.key, env.key)[0] == "host-a:1"
        s.release(unit.key, env.key, "host-a:1")
        assert s.lease(unit.key, env.key) is None
        assert s.claim(unit.key, env.key, "crashed:1", ttl_s=-1)
        assert s.claim(unit.key, env.key, "host-b:1")             # a lapsed claim is taken over


def _claim_all(db: str, owner: str, keys: list[str], env_key: str, out) -> None:
    with Store.open(db) as s:
        out.put((owner, [k for k in keys if s.claim(k, env_key, owner, ttl_s=600)]))


def test_concurrent_claimers_never_share_a_unit(any_db):
    _, env = seeded(any_db)
    keys = [f"unit-{i:03d}" for i in range(40)]
    # fork: the claimers only touch the DB, and start in milliseconds instead of importing dooly anew
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(any_db, f"host-{w}:1", keys, env.key, out))
             for w in range(2)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    claimed = [k for ks in got.values() for k in ks]
    assert sorted(claimed) == keys                                # each unit exactly once


def test_check_names_a_bad_row_and_merge_refuses_its_database(any_db, tmp_path, capsys):
    unit, env = seeded(any_db)
    assert main(["db", "check", any_db]) == 0
    raw_sql(any_db, "UPDATE units SET signature_json = ? WHERE unit_key = ?", ("{not json", unit.key))
    capsys.readouterr()
    assert main(["db", "check", any_db]) == 2
    out = capsys.readouterr().out
    assert unit.key in out and "not valid JSON" in out
    target = tmp_path / "t.db"
    assert main(["db", "merge", "--db", str(target), any_db]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nothing merged" in err and not target.exists()


def test_db_commands_read_either_backend(any_db, tmp_path, capsys):
    unit, env = seeded(any_db, points=(1, 2))
    assert main(["db", "stats", "--db", any_db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"environments": 1, "units": 1,
                                                    "measurements": 2, "failed": 0}
    assert main(["db", "list", "--db", any_db]) == 0 and unit.key in capsys.readouterr().out
    out = tmp_path / "e.json"
    assert main(["db", "export", "--db", any_db, "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["measurements"]) == 2


def test_a_sweep_job_fills_either_backend(any_db):
    from test_sweep_leases import LIM, job
    from dooly.profile.sweep_units import grid_for
    unit, env = linear_unit(), make_env()
    with Store.open(any_db) as s:
        s.add_environment(env)
        s.add_unit(unit)
        j = job(s, env)
        assert j.unit(unit.key, unit) is True
        assert len(s.points(unit.key, env.key)) == len(grid_for(unit, LIM))
        assert s.lease(unit.key, env.key) is None


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is None, reason="psycopg is not installed")
def test_postgres_errors_name_the_url_never_its_password(capsys):
    from pg_server import _free_port
    url = f"postgresql://someone:s3cret-pw@127.0.0.1:{_free_port()}/nowhere"
    assert main(["db", "stats", "--db", url]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "s3cret-pw" not in err
    assert "postgresql://someone:***@127.0.0.1" in err and "cannot connect" in err
