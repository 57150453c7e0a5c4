"""Stored data is never code: a DB carrying Python in a unit's stored dims is refused
(one line naming the DB and the unit) by every command that reads it, and nothing in
it runs; `db merge` refuses such a source whole. The stored-expression parser answers
any text with a value or a ValueError, quickly (Hypothesis)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, config
from dooly.config import load_config
from dooly.db import Store
from dooly.env import Measurement
from dooly.fit.gemm_rows import rows_from_units
from dooly.symbolic.labels import DimLabel, Label
from dooly.symbolic.symbols import MAX_EXPR_INT, evaluate, parse_request_expr
from dooly.unit import TensorSig, Unit
from test_db import linear_unit, make_env, ok

SMOL = config("HuggingFaceTB__SmolLM2-135M-Instruct")
PAYLOAD = "T+0*__import__('os').system('touch PWNED')"
# what a hostile or broken file may carry in place of a request dim
BAD_DIMS = {
    "code": PAYLOAD,
    "huge exponent": "2**2**40",
    "10,000 digits": "9" * 10_000,
    "deep nesting": "(" * 5_000 + "T" + ")" * 5_000,
    "huge power of T": "T**1000000",
    "lambda": "(lambda: 1)()",
    "attribute": "T.__class__",
}


def gemm(n: int, m_dim: str = "T") -> Unit:
    """A linear unit [M, n] x [n, n] whose M is the stored text `m_dim`."""
    m, c = DimLabel(m_dim, Label.REQUEST), DimLabel(n, Label.CONFIG)
    return Unit("linear", inputs=(TensorSig((m, c), "bfloat16"), TensorSig((c, c), "bfloat16")),
                outputs=(TensorSig((m, c), "bfloat16"),))


def hostile_db(path: Path, bad_dim: str = PAYLOAD, engine: str = "vllm") -> Unit:
    """A DB the fixture model predicts from: one GEMM measured, one not (so its GEMM
    family is fitted from every measured GEMM), and a GEMM unit whose stored M is
    `bad_dim`, written into the units table by hand with its measurements."""
    env, good, unmeasured = make_env(engine=engine), gemm(576), gemm(1536)
    bad = gemm(960, bad_dim)
    with Store.open(path) as s:
        s.add_environment(env)
        for u in (good, unmeasured):
            s.add_unit(u)
        for t in (1, 2, 4, 8, 16, 32, 64, 128):
            s.add_measurement(Measurement(good.key, env.key, {"T": t}, 0.01 * t, 0.01 * t,
                                          0.01 * t, 0.01 * t, 0.0, 10, 0))
        s.set_inventory(load_config(SMOL).hash, engine, "smol", {good.key: 30, unmeasured.key: 30})
    con = sqlite3.connect(path)
    con.execute("INSERT INTO units VALUES (?, ?, ?)", (bad.key, bad.op, json.dumps(bad.to_json())))
    con.executemany("INSERT INTO measurements (unit_key, env_key, point_json, median_ms, p10_ms, "
                    "p90_ms, mean_ms, std_ms, samples, outliers, status, reason, timestamp) VALUES "
                    "(?, ?, ?, 1, 1, 1, 1, 0, 10, 0, 'ok', '', 1)",
                    [(bad.key, env.key, json.dumps({"T": t})) for t in (1, 2, 4, 8, 16, 32, 64, 128)])
    con.commit()
    con.close()
    return bad


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dooly.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


COMMANDS = [
    ("predict", ["predict", SMOL, "--db", "{db}", "--batch", "prefill:16x1"]),
    ("simulate", ["simulate", SMOL, "--db", "{db}", "--rate", "1", "--num-requests", "2"]),
    ("export vidur", ["export", "vidur", SMOL, "--db", "{db}", "--out", "{tmp}/vidur"]),
    ("fit", ["fit", "--db", "{db}"]),
    ("db merge", ["db", "merge", "--db", "{tmp}/target.db", "{db}"]),
    ("db check", ["db", "check", "{db}"]),
]


@pytest.fixture(scope="module")
def payload_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stored-code")
    bad = hostile_db(tmp / "hostile.db")
    return tmp, tmp / "hostile.db", bad


@pytest.mark.parametrize("name, argv", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_code_in_a_stored_unit_never_runs_and_the_command_names_the_unit(payload_db, name, argv):
    tmp, db, bad = payload_db
    r = cli([a.format(db=db, tmp=tmp) for a in argv], cwd=tmp)
    assert not (tmp / "PWNED").exists() and not (ROOT / "PWNED").exists()
    assert "Traceback" not in r.stderr
    assert r.returncode == 2, r.stdout + r.stderr
    text = r.stdout if name == "db check" else r.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert any(bad.key in line and str(db) in line for line in lines), text
    if name != "db check":
        assert len(lines) == 1, r.stderr
    assert not (tmp / "target.db").exists() and not (tmp / "vidur").exists()


@pytest.mark.parametrize("kind", list(BAD_DIMS))
def test_merge_refuses_a_source_carrying_a_bad_dim_and_leaves_the_target_as_it_was(tmp_path, kind):
    source, target = tmp_path / "source.db", tmp_path / "target.db"
    bad = hostile_db(source, BAD_DIMS[kind])
    hostile_db_free = linear_unit()
    with Store.open(target) as s:
        s.add_environment(make_env())
        s.add_unit(hostile_db_free)
        s.add_measurement(ok(hostile_db_free, make_env(), 1))
    before = target.read_bytes()
    r = cli(["db", "merge", "--db", str(target), str(source)], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    [line] = r.stderr.splitlines()
    assert str(source) in line and bad.key in line and f"nothing merged, {target} unchanged" in line
    assert target.read_bytes() == before
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("kind", list(BAD_DIMS))
def test_reading_a_bad_dim_through_the_store_is_one_error_naming_db_and_unit(tmp_path, kind):
    from dooly.errors import DoolyInputError
    bad = hostile_db(tmp_path / "h.db", BAD_DIMS[kind])
    with Store.open(tmp_path / "h.db", readonly=True) as s:
        with pytest.raises(DoolyInputError) as err:
            s.units()
    assert bad.key in str(err.value) and "h.db" in str(err.value)
    assert len(str(err.value).splitlines()) == 1 and len(str(err.value)) < 400


@pytest.mark.parametrize("value", ["2**1000", PAYLOAD, 1.5, True, -4, [[1, "T"]]])
def test_a_stored_point_that_is_not_a_count_is_one_error_and_db_check_names_it(tmp_path, value):
    from dooly.db.check import problems
    from dooly.errors import DoolyInputError
    db = tmp_path / "p.db"
    hostile_db(db, "T", engine="transformers")
    key = "seqs" if isinstance(value, list) else "T"
    con = sqlite3.connect(db)
    con.execute("UPDATE measurements SET point_json = ? WHERE id = (SELECT MIN(id) FROM measurements)",
                (json.dumps({key: value}),))
    con.commit()
    con.close()
    with Store.open(db, readonly=True) as s:
        with pytest.raises(DoolyInputError) as err:
            s.measurements()
    assert "p.db" in str(err.value) and f"point: '{key}' must be" in str(err.value)
    with sqlite3.connect(db) as con:
        assert any("point_json" in p for p in problems(con))
    if value != "2**1000":
        return   # one CLI run is enough: the store refused every value above
    before = db.read_bytes()
    r = cli(["analyze", SMOL, "--db", str(db), "--engine", "transformers"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "must be" in r.stderr
    assert db.read_bytes() == before   # analyze --db refused it before recording anything


@pytest.mark.parametrize("kind", list(BAD_DIMS))
def test_gemm_family_rows_parse_stored_dims_and_never_evaluate_them(tmp_path, kind, monkeypatch):
    unit = gemm(960, BAD_DIMS[kind])
    m = Measurement(unit.key, "env", {"T": 16}, 1.0, 1.0, 1.0, 1.0, 0.0, 10, 0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=unit.key):
        rows_from_units([unit], [m])
    assert not (tmp_path / "PWNED").exists()


def test_a_fused_units_stored_body_is_checked_too(tmp_path):
    sig = TensorSig((DimLabel("T", Label.REQUEST), DimLabel(64, Label.CONFIG)), "bfloat16")
    graph = {"nodes": [{"op": "view", "args": [{"in": 0}, {"sym": PAYLOAD}, 64]}],
             "num_inputs": 1, "outputs": [0]}
    fused = Unit("fused", inputs=(sig,), outputs=(sig,), graph=graph, graph_hash="h")
    env = make_env()
    with Store.open(tmp_path / "s.db") as s:
        s.add_environment(env)
        s.add_unit(fused)
    r = cli(["db", "check", str(tmp_path / "s.db")], cwd=tmp_path)
    assert r.returncode == 2 and fused.key in r.stdout and "unsupported element" in r.stdout
    assert not (tmp_path / "PWNED").exists()


# -- the stored-expression parser, property-based ----------------------------------------
PROPERTY = settings(deadline=timedelta(seconds=2), max_examples=400, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

_atoms = st.one_of(st.sampled_from(["T", "B", "Q", "C", "x", "__import__", "floor", "1.5"]),
                   st.integers(-(10**25), 10**25).map(str))
_exprs = st.recursive(
    _atoms,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "//", "**", "/", "%", "<<"]), inner)
        .map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"-{e}"),
        inner.map(lambda e: f"f({e})")),
    max_leaves=40)


def _answers(text: str) -> None:
    """A value (an expression within the bounds that evaluates to an int) or a
    ValueError: nothing else, and nothing slow."""
    try:
        expr = parse_request_expr(text)
    except ValueError as err:
        assert len(str(err).splitlines()) == 1 and len(str(err)) < 300
        return
    for n in expr.atoms():
        if n.is_Number:
            assert abs(n.p) <= MAX_EXPR_INT and abs(n.q) <= MAX_EXPR_INT
    try:
        assert isinstance(evaluate(text, T=7, B=3, Q=5, C=11), int)
    except ValueError:
        pass  # e.g. a division by zero once the symbols have values


@PROPERTY
@given(st.text(max_size=400))
def test_any_text_is_a_value_or_a_value_error(text):
    _answers(text)


@PROPERTY
@given(_exprs)
def test_any_expression_shaped_text_is_a_value_or_a_value_error(text):
    _answers(text)


@PROPERTY
@given(st.integers(-MAX_EXPR_INT, MAX_EXPR_INT), st.sampled_from(["T", "B", "Q", "C"]))
def test_small_integer_multiples_of_a_symbol_round_trip(n, sym):
    assert evaluate(f"{n}*{sym}", **{sym: 3}) == 3 * n
