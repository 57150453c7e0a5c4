"""Damaged and unusual DB files, command by command: a corrupted page, a zero-byte file,
a missing path, a read-only file. Each case is one stderr line naming the file, exit 2,
no traceback, and no file created or changed; `dooly db check` names what is wrong."""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, config
from dooly.cli import main
from dooly.config import load_config
from dooly.db import Store
from test_db import linear_unit, make_env, ok

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")
VIDUR = str(ROOT / "fixtures" / "vidur" / "a100")
PAGE = 4096

# every command that reads a DB: (name, argv with {db} and {tmp})
READERS = [
    ("db stats", ["db", "stats", "--db", "{db}"]),
    ("db list", ["db", "list", "--db", "{db}"]),
    ("db export", ["db", "export", "--db", "{db}", "--out", "{tmp}/dump.json"]),
    ("db merge source", ["db", "merge", "--db", "{tmp}/target.db", "{db}"]),
    ("fit", ["fit", "--db", "{db}"]),
    ("predict", ["predict", SMOL, "--db", "{db}", "--batch", "prefill:16x1"]),
    ("simulate", ["simulate", SMOL, "--db", "{db}", "--rate", "1", "--num-requests", "2"]),
    ("export vidur", ["export", "vidur", SMOL, "--db", "{db}", "--out", "{tmp}/vidur"]),
    ("analyze --db", ["analyze", SMOL, "--engine", "transformers", "--db", "{db}", "--quiet"]),
]
# every command that writes one (and may create it)
WRITERS = [
    ("db merge target", ["db", "merge", "--db", "{db}", "{tmp}/other.db"]),
    ("sweep", ["sweep", SMOL, "--engine", "transformers", "--db", "{db}", "--max-tokens", "16",
               "--max-batch", "2", "--max-context", "32", "--no-recheck", "--no-progress"]),
    ("calibrate", ["calibrate", SMOL, "--db", "{db}"]),
    ("db import-vidur", ["db", "import-vidur", VIDUR, "--db", "{db}"]),
]


def healthy_db(path: Path, points: int = 3000) -> None:
    """A DB the readers can use: one GEMM unit measured at many points (so the file
    spans many pages) and the fixture model's inventory."""
    unit, env = linear_unit(), make_env(engine="transformers")
    with Store.open(path) as s:
        s.add_environment(env)
        s.add_unit(unit)
        for t in range(1, points + 1):
            s.add_measurement(ok(unit, env, t, ms=0.01 * t))
        s.set_inventory(load_config(SMOL).hash, "transformers", "smol", {unit.key: 30})
    assert not Path(f"{path}-wal").exists()  # checkpointed: every page is in the file


def corrupt_page(path: Path, page: int = 20) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(page)
    data[(page - 1) * PAGE:page * PAGE] = bytes(rng.randrange(256) for _ in range(PAGE))
    path.write_bytes(bytes(data))


def snapshot(folder: Path) -> dict[str, str]:
    """Everything under `folder` (names relative to it) -> hash of a file's bytes, or
    "<dir>" for a folder."""
    return {str(p.relative_to(folder)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def run(argv: list[str], db: Path, tmp: Path, capsys) -> tuple[int, str, str]:
    argv = [a.format(db=db, tmp=tmp) for a in argv]
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc: int, err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:  # plain text, or alternatives as a tuple
        assert any(alt in lines[0] for alt in ((n,) if isinstance(n, str) else n)), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corrupted")
    healthy_db(folder / "other.db", points=10)
    healthy_db(folder / "bad.db")
    corrupt_page(folder / "bad.db")
    return folder / "bad.db"


@pytest.mark.parametrize("name, argv", READERS + WRITERS, ids=[n for n, _ in READERS + WRITERS])
def test_a_corrupted_page_is_one_line_naming_the_file_from_every_command(corrupted, name, argv, capsys):
    tmp = corrupted.parent
    before = snapshot(tmp)
    rc, _, err = run(argv, corrupted, tmp, capsys)
    line = assert_one_line(rc, err, str(corrupted), "damaged", "dooly db check")
    if name == "db merge source":
        assert "nothing merged" in line and "not created" in line
    assert snapshot(tmp) == before


def test_db_check_names_the_damage_and_fails(corrupted, capsys):
    rc, out, err = run(["db", "check", "{db}"], corrupted, corrupted.parent, capsys)
    assert rc == 2 and not err
    assert "SQLite:" in out and "problem" in out.splitlines()[-1]


def test_db_check_passes_a_healthy_file_and_names_rows_commands_could_not_use(tmp_path, capsys):
    db = tmp_path / "m.db"
    healthy_db(db, points=20)
    rc, out, _ = run(["db", "check", "{db}"], db, tmp_path, capsys)
    assert rc == 0 and out.strip().endswith("healthy")
    unit = linear_unit()
    con = sqlite3.connect(db)
    con.execute("PRAGMA foreign_keys = OFF")  # as a hand edit or another tool would
    con.execute("UPDATE measurements SET unit_key = 'linear-gone' WHERE id = 1")
    con.execute("UPDATE measurements SET median_ms = 1e999 WHERE id = 2")
    con.execute("UPDATE units SET signature_json = replace(signature_json, '\"T\"', '\"T**99\"')")
    con.execute("INSERT INTO fits VALUES (?, ?, 'fp', '{not json', 0)", (unit.key, make_env().key))
    con.commit()
    con.close()
    rc, out, _ = run(["db", "check", "{db}"], db, tmp_path, capsys)
    assert rc == 2
    assert "no such unit" in out and "not a finite number" in out
    assert f"unit {unit.key}" in out and "model_json" in out
    assert "4 problem(s)" in out


@pytest.mark.parametrize("name, argv", READERS, ids=[n for n, _ in READERS])
@pytest.mark.parametrize("kind", ["zero-byte", "missing"])
def test_a_read_only_command_never_creates_or_initialises_a_db(tmp_path, name, argv, kind, capsys):
    db = tmp_path / "latency.db"
    if kind == "zero-byte":
        db.write_bytes(b"")
    before = snapshot(tmp_path)
    rc, _, err = run(argv, db, tmp_path, capsys)
    assert_one_line(rc, err, str(db), "empty file" if kind == "zero-byte"
                    else ("no such database file", "file not found"))
    assert snapshot(tmp_path) == before
    assert sorted(os.listdir(tmp_path)) == sorted(before)


def test_db_check_on_a_zero_byte_or_missing_file_is_one_line(tmp_path, capsys):
    (tmp_path / "zero.db").write_bytes(b"")
    for name, needle in (("zero.db", "empty file"), ("missing.db", "no such database file")):
        rc, _, err = run(["db", "check", str(tmp_path / name)], tmp_path / name, tmp_path, capsys)
        assert_one_line(rc, err, name, needle)
    assert os.listdir(tmp_path) == ["zero.db"]


@contextlib.contextmanager
def read_only(path: Path):
    """The file made unwritable for this process: `chattr +i` as root (which chmod does
    not stop), chmod 444 otherwise."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)


@pytest.mark.parametrize("name, argv", WRITERS, ids=[n for n, _ in WRITERS])
def test_a_read_only_db_given_to_a_writer_is_one_line(tmp_path, name, argv, capsys):
    db = tmp_path / "latency.db"
    healthy_db(db, points=10)
    healthy_db(tmp_path / "other.db", points=5)
    before = snapshot(tmp_path)
    with read_only(db):
        rc, _, err = run(argv, db, tmp_path, capsys)
        assert_one_line(rc, err, str(db), "read-only")
        # reading it still works
        assert main(["db", "stats", "--db", str(db), "--json"]) == 0
        capsys.readouterr()
    assert snapshot(tmp_path) == before


def test_a_failed_merge_leaves_an_existing_target_untouched_and_says_so(tmp_path, capsys):
    target, good, bad = tmp_path / "t.db", tmp_path / "good.db", tmp_path / "bad.db"
    healthy_db(target, points=5)
    healthy_db(good, points=50)
    healthy_db(bad, points=3000)
    corrupt_page(bad)
    before = snapshot(tmp_path)
    rc, _, err = run(["db", "merge", "--db", "{db}", str(good), str(bad)], target, tmp_path, capsys)
    assert_one_line(rc, err, str(bad), "damaged", f"nothing merged, {target} unchanged")
    assert snapshot(tmp_path) == before
