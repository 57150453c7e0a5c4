"""bench/cold_span.py times a unit with the sweep's runners at several rotation spans and
leaves the span the sweep uses as it was."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import cold_span  # noqa: E402

import dooly.env as env_mod


def test_the_span_bench_writes_a_median_per_shape_tokens_and_span_and_restores_the_span(tmp_path):
    before = dict(env_mod.SPAN_CACHES)
    out = tmp_path / "span.json"
    assert cold_span.main(["--shapes", "64x32", "--tokens", "1,4", "--spans", "1,2", "--trials", "1",
                           "--engine", "transformers", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert {f"64x32.T{t}.span{s}_ms" for t in (1, 4) for s in (1, 2)} <= set(got)
    assert all(got[k] > 0 for k in got)
    assert env_mod.SPAN_CACHES == before


def test_the_span_bench_refuses_a_shape_it_cannot_read(capsys, tmp_path):
    assert cold_span.main(["--shapes", "64by32", "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shapes" in err[0]
    assert not (tmp_path / "x.json").exists()
