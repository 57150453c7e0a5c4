"""A checkout stands alone: nothing tracked names a path of the machine it was written on."""
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

# home and scratch folders of the machines Dooly is written on, spelt so that this file
# does not match itself
MACHINE_PATHS = re.compile("/" + "(work|home|root)/")


def tracked_files():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / p for p in out.stdout.decode().split("\0") if p]


def test_no_tracked_file_names_an_absolute_machine_path():
    hits = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATHS.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}")
    assert hits == []


def test_fixture_folders_carry_their_provenance():
    for folder in ("configs", "traces", "vidur"):
        assert (ROOT / "fixtures" / folder / "SOURCES.md").is_file()
    for folder in ("traces", "vidur"):  # cut from MIT-licensed data: the notice travels
        assert "MIT License" in (ROOT / "fixtures" / folder / "LICENSE").read_text()
