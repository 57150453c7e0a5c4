"""What every bad-input test asserts (tests/test_bad_*.py): exit code 2, exactly one
stderr line that names what is wrong, no traceback, and no file created or changed."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from dooly.cli import main

ROOT = Path(__file__).resolve().parent.parent


def snapshot(*roots: Path) -> dict[str, str]:
    """path -> content hash of every file under `roots` (dirs as '<dir>')."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            out[str(p)] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def check_line(rc: int, out: str, err: str, names: tuple[str, ...]) -> str:
    lines = err.splitlines()
    assert rc == 2, (rc, out[-400:], err[-2000:])
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def run_bad(capsys, argv: list[str], names: tuple[str, ...], watch: Path) -> str:
    """`dooly ARGV` in this process: answered as bad input naming each of `names`,
    with no file under `watch` created or changed. Returns the stderr line."""
    capsys.readouterr()
    before = snapshot(watch)
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    line = check_line(rc, out, err, names)
    assert snapshot(watch) == before
    return line


def run_bad_process(argv: list[str], names: tuple[str, ...], watch: Path, timeout: float = 120) -> str:
    """As run_bad, in a fresh `python -m dooly.cli` process (what a user runs)."""
    before = snapshot(watch)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "dooly.cli", *map(str, argv)], cwd=watch,
                          capture_output=True, text=True, timeout=timeout, env=env)
    line = check_line(proc.returncode, proc.stdout, proc.stderr, names)
    assert snapshot(watch) == before
    return line
