"""`dooly db export --format parquet` / `dooly db import`, on both backends: a round trip
keeps every row, a second import adds nothing, the same rows give the same bytes, and
an export that was changed, cut or made up is refused whole, naming the file and row."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install -e '.[parquet]')")
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from dooly.cli import main  # noqa: E402
from dooly.db import Store  # noqa: E402
from dooly.db.parquet import PROVENANCE, _sha256  # noqa: E402
from dooly.env import Measurement  # noqa: E402
from pg_server import any_db, new_pg_db, pg_server, pg_url  # noqa: E402,F401 (fixtures)
from test_db import fused_unit, linear_unit, make_env, ok  # noqa: E402


def fill(db: str) -> None:
    env, lin, fused = make_env(), linear_unit(), fused_unit()
    with Store.open(db) as s:
        s.add_environment(env)
        s.add_environment(make_env(device_name="box-2"))
        s.add_unit(lin)
        s.add_unit(fused)
        for t in (1, 2, 4):
            s.add_measurement(ok(lin, env, t, ms=float(t), ts=100.0 + t))
        s.add_measurement(Measurement(lin.key, env.key, {"T": 8}, status="failed", reason="oom"))
        s.add_measurement(Measurement(fused.key, env.key, {"seqs": [[4, 16], [1, 32]]}, median_ms=0.5,
                                      samples=9, timestamp=123.456789))
        s.set_inventory("cfg1", "hf", "tiny", {lin.key: 22, fused.key: 2})
        s.put_fits([{"unit_key": lin.key, "env_key": env.key, "fingerprint": "f", "model": {"k": 1}}])


def dump(db: str) -> dict:
    with Store.open(db, readonly=True) as s:
        envs = s.environments()
        return {"envs": sorted(e.key for e in envs), "units": sorted((u.key, u.to_json()["op"]) for u in s.units()),
                "rows": sorted((m.unit_key, m.env_key, m.point_json, m.median_ms, m.status, m.reason,
                                m.samples, m.timestamp) for m in s.measurements(status=None)),
                "inventory": s.inventory("cfg1", "hf"),
                "fits": {e.key: {k: (v["fingerprint"], v["model"]) for k, v in s.fits(e.key).items()}
                         for e in envs}}


@pytest.fixture
def exported(any_db, tmp_path):
    fill(any_db)
    out = tmp_path / "export"
    assert main(["db", "export", "--db", any_db, "--format", "parquet", "--out", str(out)]) == 0
    return any_db, out


@pytest.mark.parametrize("target_kind", ["sqlite", "postgresql"])
def test_round_trip_between_backends_keeps_every_row_once(exported, target_kind, tmp_path, request, capsys):
    source, out = exported
    target = str(tmp_path / "t.db") if target_kind == "sqlite" else request.getfixturevalue("new_pg_db")()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [PROVENANCE] + [f"{t}.parquet" for t in ("environments", "units", "measurements", "inventories", "fits")])
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov["schema_version"] and prov["dooly_version"] and len(prov["environments"]) == 2
    assert main(["db", "import", str(out), "--db", target]) == 0
    assert dump(target) == dump(source)
    capsys.readouterr()
    assert main(["db", "import", str(out), "--db", target]) == 0          # again: nothing new
    assert "0 measurement rows and 0 fits added" in capsys.readouterr().out
    assert dump(target) == dump(source)
    assert main(["db", "check", target]) == 0


def test_the_same_rows_export_to_the_same_bytes(exported, tmp_path):
    source, out = exported
    again = tmp_path / "again"
    assert main(["db", "export", "--db", source, "--format", "parquet", "--out", str(again)]) == 0
    for f in out.iterdir():
        assert f.read_bytes() == (again / f.name).read_bytes(), f.name
    # an earlier export is replaced in place
    assert main(["db", "export", "--db", source, "--format", "parquet", "--out", str(out)]) == 0


def _rewrite(out: Path, table: str, change) -> None:
    """Change a table's rows and re-sign the export, as someone editing it by hand would."""
    path = out / f"{table}.parquet"
    data = pq.read_table(path)
    rows = change(data.to_pylist())
    pq.write_table(pa.Table.from_pylist(rows, schema=data.schema), path)
    prov = json.loads((out / PROVENANCE).read_text())
    prov["tables"][table].update(rows=len(rows), sha256=_sha256(path))
    (out / PROVENANCE).write_text(json.dumps(prov))


def _refused(out: Path, target: Path, capsys, *needles: str) -> None:
    capsys.readouterr()
    assert main(["db", "import", str(out), "--db", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing imported" in err and "not created" in err
    for needle in needles:
        assert needle in err, err
    assert not target.exists()


def test_a_non_finite_latency_is_refused_naming_the_row(exported, tmp_path, capsys):
    _, out = exported
    _rewrite(out, "measurements", lambda rows: [dict(r, median_ms=float("nan")) if r["point_json"] == '{"T":2}'
                                                 else r for r in rows])
    _refused(out, tmp_path / "t.db", capsys, "measurements.parquet", "median_ms = nan is not a finite")


def test_a_unit_whose_key_is_not_its_hash_is_refused(exported, tmp_path, capsys):
    _, out = exported
    _rewrite(out, "units", lambda rows: [dict(r, signature_json=r["signature_json"].replace("4096", "4097"))
                                         for r in rows])
    _refused(out, tmp_path / "t.db", capsys, "does not match its signature")


def test_duplicate_rows_are_refused(exported, tmp_path, capsys):
    _, out = exported
    _rewrite(out, "measurements", lambda rows: rows + rows[:1])
    _refused(out, tmp_path / "t.db", capsys, "measurements.parquet", "duplicate")


def test_a_changed_file_wrong_types_or_missing_file_are_refused(exported, tmp_path, capsys):
    _, out = exported
    (out / "inventories.parquet").write_bytes((out / "inventories.parquet").read_bytes()[:-10])
    _refused(out, tmp_path / "t.db", capsys, "inventories.parquet", "checksum")
    path = out / "inventories.parquet"
    pq.write_table(pa.table({"config_hash": ["c"], "engine": ["hf"], "model_name": ["m"],
                             "unit_key": [linear_unit().key], "count": [1.5]}), path)
    prov = json.loads((out / PROVENANCE).read_text())
    prov["tables"]["inventories"].update(rows=1, sha256=_sha256(path))
    (out / PROVENANCE).write_text(json.dumps(prov))
    _refused(out, tmp_path / "t.db", capsys, "inventories.parquet", "count:double")
    path.unlink()
    _refused(out, tmp_path / "t.db", capsys, "inventories.parquet", "not found")
    (out / PROVENANCE).write_text("{]")
    _refused(out, tmp_path / "t.db", capsys, PROVENANCE)


def test_export_never_writes_into_a_folder_of_other_files(any_db, tmp_path, capsys):
    fill(any_db)
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["db", "export", "--db", any_db, "--format", "parquet", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    assert not any(p.name.endswith((".parquet", PROVENANCE)) for p in tmp_path.iterdir())
