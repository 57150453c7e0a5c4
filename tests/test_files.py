"""dooly.files.write_whole: a file is written whole or not at all."""
from __future__ import annotations

import os

import pytest

from dooly.files import write_whole


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_whole(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_missing_folders_are_made(tmp_path):
    write_whole(tmp_path / "a" / "b" / "x.json", "{}")
    assert (tmp_path / "a" / "b" / "x.json").read_text() == "{}"
