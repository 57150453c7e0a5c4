"""The measurement store: schema round trip, upserts, failures, merge, resume,
concurrent writers, malformed files and the `dooly db` commands."""
from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3

import pytest

from dooly.cli import main
from dooly.db import SCHEMA_VERSION, Store
from dooly.env import Environment, Measurement
from dooly.errors import DoolyInputError
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import TensorSig, Unit

T = DimLabel("T", Label.REQUEST)


def make_env(**over) -> Environment:
    fields = dict(device_name="test-cpu", device_kind="cpu", engine="hf", engine_version="5.16",
                  backend="sdpa", dtype="bfloat16", torch_version="2.13.0", threads=8)
    return Environment(**{**fields, **over})


def linear_unit(n: int = 4096) -> Unit:
    return Unit("aten.linear.default",
                inputs=(TensorSig((T, DimLabel(n, Label.CONFIG)), "bfloat16"),
                        TensorSig((DimLabel(n, Label.CONFIG), DimLabel(n, Label.CONFIG)), "bfloat16")),
                outputs=(TensorSig((T, DimLabel(n, Label.CONFIG)), "bfloat16"),))


def fused_unit() -> Unit:
    graph = {"nodes": [{"name": "x", "op": "placeholder"},
                       {"name": "silu", "op": "aten.silu.default", "args": ["x"]},
                       {"name": "mul", "op": "aten.mul.Tensor", "args": ["silu", "x"]}],
             "output": ["mul"]}
    sig = TensorSig((T, DimLabel(11008, Label.CONFIG)), "bfloat16")
    return Unit("fused", inputs=(sig,), outputs=(sig,), attrs=(("n_ops", 2),), graph=graph,
                graph_hash="abc123")


def ok(unit: Unit, env: Environment, t: int, ms: float = 1.0, ts: float = 100.0) -> Measurement:
    return Measurement(unit.key, env.key, {"T": t}, median_ms=ms, p10_ms=ms * 0.9,
                       p90_ms=ms * 1.1, mean_ms=ms, std_ms=0.01, samples=20, outliers=1,
                       timestamp=ts)


def seeded(path, points=(1, 2, 4), ts: float = 100.0) -> tuple[Unit, Environment]:
    unit, env = linear_unit(), make_env()
    with Store.open(path) as s:
        s.add_environment(env)
        s.add_unit(unit)
        for t in points:
            s.add_measurement(ok(unit, env, t, ms=float(t), ts=ts))
    return unit, env


def test_schema_round_trip_keeps_units_envs_measurements_and_inventory(tmp_path):
    path = tmp_path / "m.db"
    env, lin, fused = make_env(), linear_unit(), fused_unit()
    m = Measurement(lin.key, env.key, {"seqs": [[512, 512], [1, 1024]]}, median_ms=2.5,
                    p10_ms=2.0, p90_ms=3.0, mean_ms=2.6, std_ms=0.2, samples=30, outliers=2)
    with Store.open(path) as s:
        assert s.add_environment(env) == env.key
        s.add_unit(lin)
        s.add_unit(fused)
        s.add_measurement(m)
        s.set_inventory("cfg1", "hf", "tiny-llama", {lin.key: 22, fused.key: 22})
    with Store.open(path) as s:
        assert s.environments() == [env]
        assert s.get_unit(lin.key) == lin and s.get_unit(lin.key).key == lin.key
        back = s.get_unit(fused.key)
        assert back.key == fused.key and back.graph == fused.graph
        assert s.get_unit("nope-000") is None
        assert {u.key for u in s.units()} == {lin.key, fused.key}
        assert s.measurements() == [m]
        assert s.inventory("cfg1", "hf") == {lin.key: 22, fused.key: 22}
        assert s.inventory("cfg1", "vllm") == {}
        assert s.units_measured(env.key) == {lin.key}
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_find_environment_filters_by_given_fields(tmp_path):
    a, b = make_env(), make_env(device_name="other-cpu", threads=4)
    with Store.open(tmp_path / "m.db") as s:
        s.add_environment(a)
        s.add_environment(b)
        s.add_environment(a)
        assert len(s.environments()) == 2
        assert s.find_environment(device_name="other-cpu") == [b]
        assert s.find_environment(engine="hf", threads=8) == [a]
        assert s.find_environment(engine="vllm") == []
        with pytest.raises(ValueError):
            s.find_environment(colour="red")


def test_remeasuring_a_point_replaces_it(tmp_path):
    unit, env = seeded(tmp_path / "m.db", points=(8,))
    with Store.open(tmp_path / "m.db") as s:
        s.add_measurement(ok(unit, env, 8, ms=9.0, ts=200.0))
        rows = s.measurements(unit.key, env.key)
        assert len(rows) == 1 and rows[0].median_ms == 9.0
        assert s.stats()["measurements"] == 1


def test_failed_point_is_recorded_counted_and_replaceable(tmp_path):
    unit, env = seeded(tmp_path / "m.db", points=(1,))
    with Store.open(tmp_path / "m.db") as s:
        s.add_measurement(Measurement(unit.key, env.key, {"T": 65536}, status="failed",
                                      reason="out of memory"))
        assert s.stats() == {"environments": 1, "units": 1, "measurements": 1, "failed": 1}
        failed = s.measurements(status="failed")
        assert [m.reason for m in failed] == ["out of memory"]
        assert len(s.measurements(status=None)) == 2
        assert s.has_point(unit.key, env.key, {"T": 65536})
        s.add_measurement(ok(unit, env, 65536, ms=50.0))
        assert s.stats()["failed"] == 0 and s.stats()["measurements"] == 2


def test_resumed_sweep_skips_points_already_written(tmp_path):
    unit, env = seeded(tmp_path / "m.db", points=(1, 2))
    with Store.open(tmp_path / "m.db") as s:
        s.add_measurement(Measurement(unit.key, env.key, {"T": 3}, status="failed", reason="x"))
        todo = [t for t in (1, 2, 3, 4) if not s.has_point(unit.key, env.key, {"T": t})]
        assert todo == [4]
        assert s.points(unit.key, env.key) == {'{"T":1}', '{"T":2}', '{"T":3}'}
        assert s.points(unit.key, env.key, status="ok") == {'{"T":1}', '{"T":2}'}
        # key order in the point dict does not matter
        s.add_measurement(Measurement(unit.key, env.key, {"b": 1, "a": 2}, median_ms=1.0))
        assert s.has_point(unit.key, env.key, {"a": 2, "b": 1})


def test_measurement_needs_its_unit_and_environment(tmp_path):
    with Store.open(tmp_path / "m.db") as s:
        with pytest.raises(ValueError, match="add the unit"):
            s.add_measurement(ok(linear_unit(), make_env(), 1))


def test_merge_keeps_every_measurement_once(tmp_path):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    unit, env = seeded(a, points=(1, 2, 4), ts=100.0)
    seeded(b, points=(4, 8), ts=200.0)            # T=4 is newer in b
    other_env, fused = make_env(device_name="box-2"), fused_unit()
    with Store.open(b) as s:
        s.add_environment(other_env)
        s.add_unit(fused)
        s.add_measurement(ok(fused, other_env, 16, ts=50.0))
        s.set_inventory("cfg", "hf", "m", {fused.key: 3})
    with Store.open(a) as s:
        assert s.merge_from(b) == 3                # T=8, T=4 replaced, fused T=16
        assert s.merge_from(b) == 0                # idempotent
        assert s.merge_from(a) == 0
        rows = {(m.unit_key, m.env_key, m.point_json): m for m in s.measurements()}
        assert len(rows) == 5
        assert rows[(unit.key, env.key, '{"T":4}')].timestamp == 200.0
        assert s.get_unit(fused.key).graph == fused.graph
        assert s.inventory("cfg", "hf") == {fused.key: 3}
        assert len(s.environments()) == 2
    with Store.open(b) as s:                       # an older point never replaces a newer one
        assert s.merge_from(a) == 2                # T=1, T=2 only
        assert s.measurements(unit.key, env.key)[-1].timestamp == 100.0
        assert {m.point_json: m.timestamp for m in s.measurements(unit.key)}['{"T":4}'] == 200.0


def _write_rows(path: str, worker: int, n: int) -> None:
    unit, env = linear_unit(), make_env()
    with Store.open(path) as s:
        s.add_environment(env)
        s.add_unit(unit)
        for i in range(n):
            s.add_measurement(ok(unit, env, worker * 100000 + i))


def test_two_processes_writing_one_file_both_finish(tmp_path):
    path = str(tmp_path / "shared.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_rows, args=(path, w, 200)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store.open(path) as s:
        assert s.stats() == {"environments": 1, "units": 1, "measurements": 400, "failed": 0}


def test_malformed_file_is_one_line_error_naming_it(tmp_path, capsys):
    path = tmp_path / "junk.db"
    path.write_bytes(os.urandom(4096))
    assert main(["db", "stats", "--db", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "not a Dooly database" in err


def test_foreign_sqlite_file_is_not_a_dooly_database(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE things (x)")
    con.commit()
    con.close()
    with pytest.raises(DoolyInputError, match="not a Dooly database"):
        Store.open(path)


def test_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "m.db"
    seeded(path)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(DoolyInputError, match="newer"):
        Store.open(path)


def test_stats_on_missing_file_is_an_error(tmp_path, capsys):
    path = tmp_path / "missing.db"
    assert main(["db", "stats", "--db", str(path)]) == 2
    assert str(path) in capsys.readouterr().err
    assert not path.exists()


def test_stats_json_has_exactly_the_four_counts(tmp_path, capsys):
    path = tmp_path / "m.db"
    seeded(path, points=(1, 2))
    assert main(["db", "stats", "--db", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == {"environments": 1, "units": 1, "measurements": 2, "failed": 0}
    assert list(json.loads(out)) == ["environments", "units", "measurements", "failed"]
    assert main(["db", "stats", "--db", str(path)]) == 0
    assert "measurements" in capsys.readouterr().out


def test_list_export_and_merge_commands(tmp_path, capsys):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    unit, env = seeded(a, points=(1, 2))
    seeded(b, points=(2, 3), ts=300.0)
    assert main(["db", "list", "--db", str(a), "--env", env.key]) == 0
    out = capsys.readouterr().out
    assert unit.key in out and "aten.linear.default" in out
    assert main(["db", "merge", "--db", str(a), str(b)]) == 0
    assert "2 rows added" in capsys.readouterr().out
    out_json = tmp_path / "dump.json"
    assert main(["db", "export", "--db", str(a), "--out", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert len(data["measurements"]) == 3 and data["units"][0]["key"] == unit.key
    assert data["environments"][0]["env_key"] == env.key
    assert set(data) >= {"environments", "units", "measurements", "inventories"}


def test_older_database_is_migrated_on_open(tmp_path, monkeypatch):
    from dooly.db import schema
    path = tmp_path / "m.db"
    seeded(path)
    add_note = lambda conn: conn.execute("ALTER TABLE units ADD COLUMN note TEXT")  # noqa: E731
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [add_note])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    with Store.open(path) as s:
        assert s.stats()["measurements"] == 3
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "note" in [r[1] for r in con.execute("PRAGMA table_info(units)")]


def test_empty_file_becomes_a_database_only_when_opened_to_create(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    for kwargs in ({"create": False}, {"readonly": True}):
        with pytest.raises(DoolyInputError, match="empty file"):
            Store.open(path, **kwargs)
        assert path.stat().st_size == 0
    with Store.open(path) as s:
        assert s.stats() == {"environments": 0, "units": 0, "measurements": 0, "failed": 0}


def test_read_only_open_never_writes(tmp_path):
    path = tmp_path / "m.db"
    unit, env = seeded(path)
    with Store.open(path, readonly=True) as s:
        assert len(s.measurements()) == 3
        with pytest.raises(DoolyInputError, match="read-only"):
            s.add_measurement(ok(unit, env, 99))
    with Store.open(path, readonly=True) as s:
        assert len(s.measurements()) == 3
    assert sorted(os.listdir(tmp_path)) == ["m.db"]  # no WAL side files left behind


def test_older_database_is_refused_by_reads_and_upgraded_by_migrate(tmp_path, monkeypatch, capsys):
    from dooly.db import schema
    path = tmp_path / "m.db"
    seeded(path)
    add_note = lambda conn: conn.execute("ALTER TABLE units ADD COLUMN note TEXT")  # noqa: E731
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [add_note])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    before = path.read_bytes()
    for kwargs in ({"create": False}, {"readonly": True}):
        with pytest.raises(DoolyInputError, match="dooly db migrate"):
            Store.open(path, **kwargs)
    assert path.read_bytes() == before
    assert main(["db", "migrate", str(path)]) == 0
    with Store.open(path, readonly=True) as s:
        assert s.stats()["measurements"] == 3


# -- leases: sweepers sharing one DB --------------------------------------------------
def test_a_unit_claimed_by_a_live_sweeper_is_refused_to_others(tmp_path):
    unit, env = seeded(tmp_path / "m.db")
    with Store.open(tmp_path / "m.db") as s:
        assert s.claim(unit.key, env.key, "host-a:1", ttl_s=60)
        assert s.claim(unit.key, env.key, "host-a:1", ttl_s=60)      # ours again: renewed
        assert not s.claim(unit.key, env.key, "host-b:2", ttl_s=60)
        assert s.lease(unit.key, env.key)[0] == "host-a:1"
        assert not s.renew(unit.key, env.key, "host-b:2")
        assert s.renew(unit.key, env.key, "host-a:1")
        s.release(unit.key, env.key, "host-b:2")                       # not theirs to release
        assert s.lease(unit.key, env.key)[0] == "host-a:1"
        s.release(unit.key, env.key, "host-a:1")
        assert s.lease(unit.key, env.key) is None
        assert s.claim(unit.key, env.key, "host-b:2")


def test_a_lapsed_or_dead_sweepers_claim_can_be_taken_over(tmp_path):
    import socket
    unit, env = seeded(tmp_path / "m.db")
    with Store.open(tmp_path / "m.db") as s:
        assert s.claim(unit.key, env.key, "host-a:1", ttl_s=-1)        # already expired
        assert s.claim(unit.key, env.key, "host-b:2")
        assert not s.renew(unit.key, env.key, "host-a:1")              # host-a lost it
        # a process on this host that no longer exists holds no claim, expired or not
        proc = multiprocessing.get_context("spawn").Process(target=int)
        proc.start()
        proc.join()
        s.release(unit.key, env.key, "host-b:2")
        assert s.claim(unit.key, env.key, f"{socket.gethostname()}:{proc.pid}", ttl_s=600)
        assert s.claim(unit.key, env.key, "host-c:3")


# -- merge checks every row of a source first ------------------------------------------
def _poke(path, sql: str, args=()) -> None:
    con = sqlite3.connect(path)
    con.execute(sql, args)
    con.commit()
    con.close()


@pytest.mark.parametrize("damage, expect", [
    ("UPDATE units SET unit_key = 'linear-000000000000'", "key does not match"),
    ("UPDATE units SET signature_json = '{\"op\": 1'", "not valid JSON"),
    ("UPDATE units SET signature_json = '[]'", "expected a JSON object"),
    ("UPDATE units SET signature_json = replace(signature_json, '\"T\"', '\"2**2**40\"')",
     "exponent"),
    ("UPDATE measurements SET median_ms = 1e999", "not a finite number"),
    ("UPDATE measurements SET point_json = 'nope' || id", "point_json"),
    ("UPDATE measurements SET point_json = '{\"T\": \"x' || id || '\"}'", "point_json"),
    ("UPDATE measurements SET env_key = 'nowhere'", "no such environment"),
    ("UPDATE environments SET threads = 99", "key does not match"),
])
def test_merge_refuses_a_source_with_a_bad_row_and_changes_nothing(tmp_path, damage, expect):
    target, source = tmp_path / "t.db", tmp_path / "s.db"
    seeded(target, points=(1,))
    seeded(source, points=(2, 3), ts=500.0)
    _poke(source, damage)
    before = target.read_bytes()
    with Store.open(target) as s:
        with pytest.raises(DoolyInputError, match=expect) as err:
            s.merge_from(source)
    assert str(source) in str(err.value)
    assert target.read_bytes() == before
