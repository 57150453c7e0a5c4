"""bench/gpu_check.py: the device checks a GPU session runs as one script."""
import importlib.util
import json
from pathlib import Path

import pytest

from dooly.inventory import Inventory

ROOT = Path(__file__).resolve().parents[1]
CARRIED = ROOT / "bench" / "gpu_inventories.json"


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_carried_captures_read_back_as_this_doolys_units():
    invs = [Inventory.from_json(o) for o in json.loads(CARRIED.read_text())]
    assert len(invs) == len(_bench().CONFIGS) == 8
    assert all(inv.engine == "transformers" and inv.entries for inv in invs)
    assert not any(inv.config_path.startswith("/") for inv in invs)   # no machine paths


@pytest.mark.slow
def test_a_cpu_run_sweeps_and_scores_every_figure(tmp_path):
    two = tmp_path / "two.json"
    two.write_text(json.dumps(json.loads(CARRIED.read_text())[:2]))
    out = tmp_path / "gc.json"
    assert _bench().main(["--inventories", str(two), "--device", "cpu", "--max-tokens", "8",
                          "--max-batch", "2", "--max-context", "16", "--db", str(tmp_path / "g.db"),
                          "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    assert fig["models"] == 2 and fig["sweep.points_measured"] > 0
    assert fig["unit_cv_mape_pct.mean"] > 0 and "gemm_family_lomo_pct" in fig
    assert "family.all_ops.median_pct" in fig


def test_a_malformed_captures_file_is_one_line_naming_it_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "inv.json"
    bad.write_text('[{"model": "m"}]')
    db = tmp_path / "g.db"
    assert _bench().main(["--inventories", str(bad), "--device", "cpu", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "'config'" in err
    assert not db.exists()   # nothing written before every input was read
