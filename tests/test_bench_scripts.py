"""Every bench runs from a checkout without an install: the repository root goes on
sys.path before the first `dooly` import. Eight benches once imported `dooly` first;
they worked only where an editable install pointed at the same checkout, and from a
worktree they would have imported another checkout's code."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
ROOT_ARGS = ("str(ROOT)", "parents[1]", "parent.parent")


def _first_lines(path: Path) -> tuple[int | None, int | None]:
    """(line of the first sys.path.insert of the repository root, line of the first dooly import)."""
    tree = ast.parse(path.read_text())
    root = dooly = None
    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "sys.path.insert":
            if any(a in ast.unparse(node) for a in ROOT_ARGS):
                root = min(line, root or line)
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n == "dooly" or n.startswith("dooly.") for n in names):
            dooly = min(line, dooly or line)
    return root, dooly


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_a_bench_puts_the_checkout_on_the_path_before_importing_dooly(path):
    root, dooly = _first_lines(path)
    if dooly is not None:
        assert root is not None and root < dooly, f"{path.name}: dooly imported at line {dooly} first"
