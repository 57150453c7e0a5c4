"""The engine's step time beyond the model's units: one model per environment, fitted on
the whole engine steps of every calibrated model and applied to any model.

A unit timed alone misses what the engine spends around it: the scheduler and output
processing, input preparation and attention metadata, per layer the dispatch of the
attention and KV-write ops and the compiled graph's Python around its kernels (measured on
vLLM-CPU by `bench/accuracy_batch.py --breakdown`: 3.7 ms of a 32 ms SmolLM2 decode step),
sampling bookkeeping; and units timed alone pay a call each that the compiled graph does
not (the same step's small kernels, 2.6 ms less than their units). Inside the engine the
same kernels also run at another speed than alone (the weights and activations of the
neighbouring ops in the caches, the compiled graph's own kernels for fused regions): on an
AMX host the units of a SmolLM2 prefill were 20% under its forward, Qwen2.5-0.5B's 14%, so
one term is proportional to the units' own time. That time depends on the engine and
the host (the environment), on the model's structure (layers, attention layers, vocabulary,
KV width) and on the batch; not on the model's name. `dooly calibrate` stores each real
`LLMEngine.step` as a measurement of the pseudo-unit `engine.step` whose attributes are the
model's structure (`model_structure`; the config hash rides along as provenance only and
enters no feature), its point the batch. `EngineStepModel` fits

    residual(step) = step - units = sum_k coef_k * batch_term_k(seqs) * structure_term_k

over the pool of every calibrated model's steps (one batch term is `units` itself), each model's `units` predicted from its own
inventory and the stored unit fits at load time (so the correction always matches the unit
fits it corrects). The loss is Huber on relative error (decode steps are milliseconds, long
prefills seconds, and one step slowed by another process must not pull the line); each model
weighs the same. The one per-token term is `prefill_gemm`: the step's GEMM units times its
share of prefill tokens. A prefill's GEMMs run longer inside the engine than alone (on
vLLM-CPU the real steps of 128 tokens or more ran 1.15-1.36x their prediction in every bench,
in-sample too, while decode steps and a MoE model's expert kernels did not), so the share is
learned from every calibrated model's steps; with it, the model-out serving replay of
`bench/results/2026-12-02/e2e1` went from TTFT 46% / TPOT 30% (worst model and load) to
18% / 12%."""
from __future__ import annotations

import numpy as np

from dooly.fit.step_features import FEATURES, MIN_ROWS, batch_terms, features, structure_terms

class EngineStepModel:
    """residual = step - units, linear in FEATURES (scikit-learn contract). `terms`: the
    feature names it may use (default all)."""

    def __init__(self, terms: tuple[str, ...] | None = None):
        self.terms = terms

    def fit(self, rows: list[dict]) -> "EngineStepModel":
        """rows: {"seqs", "structure", "step_ms", "units_ms", "model" (weighting group),
        "graph" (optional)}. Each model's rows weigh the same in total."""
        if len(rows) < MIN_ROWS:
            raise ValueError(f"rows: need at least {MIN_ROWS} steps, got {len(rows)}")
        from sklearn.linear_model import HuberRegressor
        step = np.array([r["step_ms"] for r in rows], dtype=float)
        x = np.array([features(r["seqs"], r["structure"], r.get("graph"), r["units_ms"], r.get("gemm_ms", 0.0))
                      for r in rows]) / step[:, None]
        y = (step - np.array([r["units_ms"] for r in rows], dtype=float)) / step
        groups = [r.get("model", "") for r in rows]
        per = {g: groups.count(g) for g in set(groups)}
        w = np.array([1.0 / per[g] for g in groups])
        scale = np.abs(x).max(axis=0)
        if self.terms is not None:
            # a term outside the set must not crowd out one inside it (`_independent`)
            scale[[f[0] not in self.terms for f in FEATURES]] = 0.0
        keep = _independent(x, scale)
        reg = HuberRegressor(fit_intercept=False, alpha=1e-4, max_iter=5000)
        reg.fit(x[:, keep] / scale[keep], y, sample_weight=w * len(w) / w.sum())
        self.coef_ = np.zeros(len(FEATURES))
        self.coef_[keep] = reg.coef_ / scale[keep]
        self.models_ = sorted(per)
        self.n_rows_ = len(rows)
        self.in_sample_mape_pct_ = float(100 * np.mean(np.abs(x @ self.coef_ - y)))
        return self

    def predict_one(self, seqs, structure: dict, graph: str | None = None, units_ms: float = 0.0,
                    gemm_ms: float = 0.0) -> float:
        return float(features(seqs, structure, graph, units_ms, gemm_ms) @ self.coef_)

    def bind(self, structure: dict, graphs=None) -> "BoundStepModel":
        return BoundStepModel(self, structure, graphs)

    def to_json(self) -> dict:
        return {"kind": "engine_step", "features": [list(f) for f in FEATURES], "terms": self.terms,
                "coef": [float(c) for c in self.coef_], "models": list(self.models_),
                "n_rows": self.n_rows_, "in_sample_mape_pct": self.in_sample_mape_pct_}

    @classmethod
    def from_json(cls, obj: dict) -> "EngineStepModel":
        if obj.get("kind") != "engine_step" or [tuple(f) for f in obj.get("features", [])] != list(FEATURES):
            raise ValueError("features: a stored engine-step model with other features")
        m = cls(tuple(str(t) for t in obj["terms"]) if obj.get("terms") else None)
        m.coef_ = np.array([float(c) for c in obj["coef"]])
        m.models_, m.n_rows_ = list(obj["models"]), int(obj["n_rows"])
        m.in_sample_mape_pct_ = float(obj["in_sample_mape_pct"])
        return m


def _independent(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Columns kept in FEATURES order, each only if it is not (nearly) a combination of the
    kept ones: a term the calibration never varied apart from another (one model alone
    cannot tell per-step from per-layer) gets no weight rather than an arbitrary one."""
    keep = np.zeros(x.shape[1], dtype=bool)
    cols = []
    for j in range(x.shape[1]):
        if scale[j] <= 0:
            continue
        trial = np.column_stack(cols + [x[:, j] / scale[j]])
        sv = np.linalg.svd(trial, compute_uv=False)
        if sv[-1] > 1e-6 * sv[0]:
            cols.append(x[:, j] / scale[j])
            keep[j] = True
    return keep


class BoundStepModel:
    """A fitted model applied to one model's structure: the structure terms folded into
    per-batch-term weights, so a prediction is a few multiplications (the simulator calls
    it every step). `graphs` (a dooly.fit.cudagraph.GraphPolicy) marks FULL replays."""

    def __init__(self, model: EngineStepModel, structure: dict, graphs=None):
        self.model, self.structure, self.graphs = model, dict(structure), graphs
        s = structure_terms(structure)
        self.weights: dict[str, float] = {}
        for (_, bt, st), c in zip(FEATURES, model.coef_):
            self.weights[bt] = self.weights.get(bt, 0.0) + float(c) * s[st]

    def predict_one(self, seqs, units_ms: float = 0.0, gemm_ms: float = 0.0) -> float:
        graph = self.graphs.mode(seqs) if self.graphs is not None else None
        b = batch_terms(seqs, graph, units_ms, gemm_ms)
        return sum(w * b[k] for k, w in self.weights.items())
