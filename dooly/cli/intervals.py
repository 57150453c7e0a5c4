"""`dooly simulate --intervals N`: the workload simulated again N times with step times
drawn within the predictor's stated error (`dooly.sim.intervals`), each metric with its
90% band."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class _Flat:
    """A stand-in step model answering like a Prediction: one part, no stated error."""
    breakdown: dict = field(default_factory=dict)
    engine_ms: float = 0.0


def simulate_intervals(args, requests, step_ms, sched, summary) -> dict:
    """Runs the draws, prints the bands and returns them for the JSON summary."""
    from rich.console import Console

    from dooly.sim.intervals import BAND_PCT, Uncertainty, bands_table, run_draws, summary_bands
    owner = getattr(step_ms, "__self__", None)   # the Predictor whose step_ms was simulated
    if owner is not None and hasattr(owner, "predict") and hasattr(owner, "models"):
        from dooly.db import Store
        from dooly.uncertainty import predictor_uncertainty
        from dooly.config import load_config
        with Store.open(args.db, create=False) as store:
            unc = predictor_uncertainty(owner, store, load_config(args.config).hash)
        predict = owner.predict
    else:   # a stand-in states no error: the bands are the nominal run's figures
        unc = Uncertainty(step_source="none: a stand-in step model")

        from dooly.sim.scheduler import ScheduledSeq

        def predict(pairs):
            return _Flat({"step": step_ms([ScheduledSeq(q, c, False) for q, c in pairs])})
    draws = run_draws(requests, predict, unc, sched, args.intervals, args.seed)
    bands = summary_bands(draws)
    Console().print(bands_table(summary, bands, unc, args.intervals,
                                f"{BAND_PCT}% bands over {args.intervals} drawn runs"))
    if unc.step_source.startswith("in-sample"):
        print("dooly: one calibrated model in the engine-step pool: its in-sample error stands "
              "in for the model-out error (`dooly calibrate` another model)", file=sys.stderr)
    return {"draws": args.intervals, "band_pct": BAND_PCT, "unit_error_pct_mean": unc.mean_unit_pct,
            "step_error_pct": unc.step_pct, "step_error_source": unc.step_source,
            **unc.kind_fields(), **bands}
