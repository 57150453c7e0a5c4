"""bench/family_lomo.py over a Dooly DB: each model's units predicted by families trained on
the other models' units only, their check points judged, nothing measured and the DB
left as it was."""
import json
import sys
from pathlib import Path

from dooly.db import Store
from dooly.env import Measurement

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import family_lomo  # noqa: E402
from test_families import ENV, gemm_ms, linear  # noqa: E402

SHAPES = {"a": [(512, 1536), (1536, 512)], "b": [(768, 2304), (2304, 768)], "c": [(1024, 3072), (3072, 1024)]}


def _db(path, models=SHAPES) -> Path:
    with Store.open(path) as s:
        s.add_environment(ENV)
        for name, shapes in models.items():
            units = [linear(k, n) for k, n in shapes]
            for u in units:
                s.add_unit(u)
                for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
                    s.add_measurement(Measurement(u.key, ENV.key, {"T": t}, gemm_ms(u, t), samples=5))
            s.set_inventory(f"hash-{name}", "vllm", name, {u.key: 4 for u in units})
    return path


def test_every_models_units_are_judged_by_families_of_the_others(tmp_path, capsys):
    db = _db(tmp_path / "m.db")
    before = db.read_bytes()
    out = tmp_path / "f.json"
    assert family_lomo.main(["--db", str(db), "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    assert fig["models"] == 3 and fig["units"] == 6
    passed, total = (int(v) for v in fig["family.linear.checks_passed"].split("/"))
    assert total == 6 and 0 <= passed <= total
    assert fig["family.linear.median_pct"] >= 0
    assert db.read_bytes() == before          # read from a copy
    assert "3 models, 6 units" in capsys.readouterr().out


def test_a_db_with_one_model_or_none_is_one_line_and_exit_2(tmp_path, capsys):
    one = _db(tmp_path / "one.db", {"a": SHAPES["a"]})
    assert family_lomo.main(["--db", str(one)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one.db" in err[0] and "two models" in err[0]
    assert family_lomo.main(["--db", str(tmp_path / "none.db")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.db" in err[0] and "--db" in err[0]
    assert not (tmp_path / "none.db").exists()


def test_an_unknown_environment_is_one_line_naming_the_flag(tmp_path, capsys):
    db = _db(tmp_path / "m.db")
    assert family_lomo.main(["--db", str(db), "--env", "0123"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--env" in err[0] and str(db) in err[0]


def test_the_own_grid_ceiling_passes_a_smooth_curve_and_fails_a_step_at_a_check_point():
    u = linear(512, 1536)
    ts = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    smooth = [Measurement(u.key, ENV.key, {"T": t}, 0.01 * t ** 0.8, samples=5) for t in ts]
    assert family_lomo.own_grid_passes(u, smooth, 3.0) is True
    # a tile step at the middle check point: no predictor that reads the curve from its
    # neighbours can see it, so the rule's ceiling fails the unit
    from dooly.profile.checkpoints import check_points
    mid = check_points(u, [{"T": t} for t in ts])[1]["T"]
    step = [Measurement(u.key, ENV.key, {"T": t}, 0.01 * t ** 0.8 * (1.2 if t == mid else 1.0),
                        samples=5) for t in ts]
    assert family_lomo.own_grid_passes(u, step, 3.0) is False
    assert family_lomo.own_grid_passes(u, smooth[:3], 3.0) is None   # too few points to judge


def test_copies_of_a_point_from_several_profiles_count_once_at_their_median():
    u = linear(512, 1536)
    copies = [Measurement(u.key, ENV.key, {"T": 8}, ms, samples=5) for ms in (1.0, 1.3, 1.1)]
    other = Measurement(u.key, ENV.key, {"T": 16}, 2.0, samples=5)
    failed = Measurement(u.key, ENV.key, {"T": 32}, 0.0, samples=0, status="failed")
    out = sorted(family_lomo.one_per_point(copies + [other, failed]), key=lambda m: m.point["T"])
    assert [(m.point["T"], m.median_ms) for m in out] == [(8, 1.1), (16, 2.0)]


def test_the_json_carries_the_rules_ceiling_beside_the_checks(tmp_path):
    db = _db(tmp_path / "m.db")
    out = tmp_path / "f.json"
    assert family_lomo.main(["--db", str(db), "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    passed, total = (int(v) for v in fig["family.linear.own_grid_passed"].split("/"))
    assert total == 6 and passed <= total
    assert 0.0 <= fig["family.own_grid_pass_pct"] <= 100.0


def test_a_step_tolerance_passes_every_check_the_3pct_rule_passes_and_more(tmp_path):
    db = _db(tmp_path / "m.db")
    figs = []
    for extra in ([], ["--step-tolerance", "50"]):
        out = tmp_path / f"f{len(extra)}.json"
        assert family_lomo.main(["--db", str(db), "--json", str(out)] + extra) == 0
        figs.append(json.loads(out.read_text()))
    plain, step = (int(f["family.linear.checks_passed"].split("/")[0]) for f in figs)
    assert step >= plain and figs[1]["step_tolerance_pct"] == 50


def test_a_bad_step_tolerance_is_one_line_and_exit_2(tmp_path, capsys):
    db = _db(tmp_path / "m.db")
    assert family_lomo.main(["--db", str(db), "--step-tolerance", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--step-tolerance" in err[0]


def test_a_served_units_worst_point_between_its_checks_is_reported(tmp_path):
    # a bump at T=4, between two check points: the checks pass, the worst point says 30%
    db = _db(tmp_path / "m.db")
    with Store.open(db) as s:
        u = linear(*SHAPES["c"][0])
        s.add_measurement(Measurement(u.key, ENV.key, {"T": 4}, 1.3 * gemm_ms(u, 4), samples=5))
    out = tmp_path / "f.json"
    assert family_lomo.main(["--db", str(db), "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    assert fig["family.linear.served_worst_pct"] == fig["family.served_worst_max_pct"]
    assert fig["family.served_worst_max_pct"] >= 20.0   # 1 - 1/1.3
    assert fig["family.served_worst_median_pct"] < 20.0
