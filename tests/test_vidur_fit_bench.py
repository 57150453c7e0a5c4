"""bench/vidur_fit.py on the repository's cut of Vidur's data (one model)."""
import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "vidur_fit", Path(__file__).resolve().parents[1] / "bench" / "vidur_fit.py")
vidur_fit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vidur_fit)


def test_the_default_one_model_cut_prints_its_unit_fits_and_skips_what_needs_two_models(tmp_path, capsys):
    out = tmp_path / "vf.json"
    assert vidur_fit.main(["--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    assert fig["files"] == 1 and fig["cv_mape_pct.all_ops_mean"] > 0
    assert not any(k.startswith("family.") for k in fig)
    assert "needs the ops of two models" in capsys.readouterr().out
