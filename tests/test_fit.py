"""dooly.fit: estimators, model selection, refit-on-change, JSON storage, GEMM family."""
import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from dooly.env import Measurement
from dooly.fit import (ConstantRegressor, FittedUnitModel, GemmFamily, GemmRow, InterpolatingRegressor,
                       IsotonicInterp, LogTargetTrees, PolyLinear, estimator_from_json, feature_matrix,
                       feature_names, features, fit_units, gemm_shape, holdout_error, models_from_json,
                       models_to_json, rows_from_units, select_model)
from dooly.fit.estimators import needs_refit
from dooly.symbolic.labels import DimLabel, Label
from dooly.unit import TensorSig, Unit

ESTIMATORS = [InterpolatingRegressor(), IsotonicInterp(), PolyLinear(degree=2),
              PolyLinear(degree=1, positive=True), ConstantRegressor(),
              LogTargetTrees("gbr", n_estimators=20), LogTargetTrees("rf", n_estimators=10)]


def T():
    return DimLabel("T", Label.REQUEST)


def c(v):
    return DimLabel(v, Label.CONFIG)


def linear_unit(K, N, dtype="float16"):
    return Unit("linear", (TensorSig((T(), c(K)), dtype), TensorSig((c(N), c(K)), dtype)),
                (TensorSig((T(), c(N)), dtype),), attrs=(("bias", False),))


def meas(unit_key, points_y, env="env0"):
    return [Measurement(unit_key, env, {"T": t}, median_ms=y, mean_ms=y, timestamp=0.0) for t, y in points_y]


# ---------------------------------------------------------------- features

def test_features_per_driver():
    assert features("tokens", {"T": 128}).tolist() == [128.0]
    assert features("seqs", {"B": 8}).tolist() == [8.0]
    assert features("none", {}).shape == (0,)
    f = features("attention", {"seqs": [[512, 0], [1, 1023], [1, 99]]})
    names = feature_names("attention")
    got = dict(zip(names, f.tolist()))
    assert got == {"num_tokens": 514, "qk_work": 512 * 512 + 1024 + 100, "kv_read": 512 + 1024 + 100,
                   "num_decode": 2, "num_prefill": 1, "batch_size": 3}
    assert feature_matrix("tokens", [{"T": 1}, {"T": 2}]).shape == (2, 1)
    with pytest.raises(ValueError, match="'T'"):
        features("tokens", {"B": 3})
    with pytest.raises(ValueError, match="driver"):
        features("bogus", {})


# ---------------------------------------------------------------- estimators

@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: f"{type(e).__name__}")
def test_estimator_contract(est):
    X = np.array([[1.0], [2.0], [4.0], [8.0], [16.0], [32.0]] * 2)
    y = 0.5 + 0.1 * X[:, 0]
    est = clone(est)
    with pytest.raises(NotFittedError):
        est.predict(X)
    before = {k for k in vars(est) if k.endswith("_")}
    assert before == set()
    params = est.get_params()
    assert est.fit(X, y) is est
    learned = {k for k in vars(est) if k.endswith("_") and not k.startswith("_")}
    assert learned and "n_features_in_" in learned
    assert est.get_params() == params
    pred = est.predict(X)
    assert pred.shape == (len(X),) and (pred >= 0).all()
    twin = clone(est)
    assert twin.get_params() == params
    with pytest.raises(NotFittedError):
        twin.predict(X)


def test_interpolation_exact_at_knots_and_averages_duplicates():
    X = np.array([[1.0], [2.0], [2.0], [4.0], [8.0]])
    y = np.array([1.0, 2.0, 3.0, 4.0, 8.0])
    est = InterpolatingRegressor().fit(X, y)
    assert est.predict([[1.0], [2.0], [4.0], [8.0]]).tolist() == [1.0, 2.5, 4.0, 8.0]
    assert est.predict([[3.0]])[0] == pytest.approx(3.25)
    # beyond the last knot: the least-squares trend of the last knots, never downward
    from dooly.fit.estimators import end_slope
    slope = end_slope(est.knots_x_, est.knots_y_)
    assert 0.9 < slope < 1.0
    assert est.predict([[16.0]])[0] == pytest.approx(8.0 + 8 * slope)
    assert est.predict([[0.0]])[0] == pytest.approx(1.0)     # flat below the first knot
    with pytest.raises(ValueError, match="one feature"):
        InterpolatingRegressor().fit(np.ones((3, 2)), np.ones(3))


def test_isotonic_interp_is_monotone_and_extrapolates_upward():
    rng = np.random.default_rng(0)
    x = np.arange(1, 101, dtype=float)
    y = 0.01 * x + rng.normal(0, 0.05, len(x)) + 1
    est = IsotonicInterp().fit(x[:, None], y)
    grid = np.linspace(-10, 200, 500)[:, None]
    p = est.predict(grid)
    assert (np.diff(p) >= -1e-12).all()
    assert p[-1] > est.predict([[100.0]])[0]


def test_polylinear_recovers_quadratic_and_nonneg():
    x = np.linspace(1, 1000, 30)
    y = 2 + 0.01 * x + 3e-5 * x ** 2
    est = PolyLinear(degree=2).fit(x[:, None], y)
    assert np.allclose(est.predict(x[:, None]), y, rtol=1e-6)
    pos = PolyLinear(degree=1, positive=True).fit(x[:, None], y)
    assert (pos.coef_ >= 0).all()


# ---------------------------------------------------------------- selection

def test_select_model_linear_data():
    rng = np.random.default_rng(1)
    T_ = np.arange(16, 4097, 64, dtype=float)
    y = (0.02 + 1e-4 * T_) * rng.normal(1, 0.01, len(T_))
    fm = select_model(T_[:, None], y, "tokens")
    assert fm.cv_mape_pct < 5
    assert fm.points == len(T_) and fm.driver == "tokens"
    assert set(fm.cv_by_candidate) >= {"interp", "isotonic", "poly1", "poly2"}
    assert fm.cv_mape_pct == min(v for v in fm.cv_by_candidate.values())
    assert fm.predict_one({"T": 1000}) == pytest.approx(0.02 + 0.1, rel=0.03)


def test_select_model_knee_data():
    # GEMM-like: flat (memory-bound) until a knee, then linear; 1% noise.
    rng = np.random.default_rng(2)
    T_ = np.unique(np.concatenate([np.arange(1, 16), np.arange(16, 8193, 32)])).astype(float)
    y = np.maximum(0.05, 2e-5 * T_) * rng.normal(1, 0.01, len(T_))
    fm = select_model(T_[:, None], y, "tokens")
    assert fm.cv_mape_pct < 5
    assert fm.name in ("interp", "isotonic")
    assert not fm.extrapolates({"T": 100}) and fm.extrapolates({"T": 10 ** 5})


def test_select_model_few_points_and_single_point():
    fm = select_model([[1.0], [2.0], [4.0]], [1.0, 2.0, 4.0], "tokens")   # leave-one-out
    assert fm.cv_mape_pct is not None and fm.points == 3
    one = select_model([[7.0]], [0.5], "tokens")
    assert one.name == "constant" and one.cv_mape_pct is None
    assert one.predict_one({"T": 100}) == 0.5
    const = select_model(np.zeros((4, 0)), [1.0, 1.1, 0.9, 1.0], "none")
    assert const.name == "constant" and const.predict_one({}) == pytest.approx(1.0)


def _attention_batches(n, rng):
    pts = []
    for _ in range(n):
        seqs = [[1, int(rng.integers(16, 4096))] for _ in range(int(rng.integers(0, 32)))]
        seqs += [[int(rng.integers(16, 1024)), int(rng.integers(0, 2048))] for _ in range(int(rng.integers(0, 3)))]
        pts.append({"seqs": seqs or [[1, 128]]})
    return pts


def test_select_model_attention_linear_work():
    rng = np.random.default_rng(3)
    pts = _attention_batches(120, rng)
    X = feature_matrix("attention", pts)
    y = (0.01 + 2e-5 * X[:, 0] + 1e-8 * X[:, 1] + 5e-7 * X[:, 2]) * rng.normal(1, 0.01, len(pts))
    fm = select_model(X, y, "attention")
    assert {"linear", "gbr_log", "rf_log"} <= set(fm.cv_by_candidate)
    assert fm.cv_mape_pct < 5


# ---------------------------------------------------------------- fit_units / storage

def _two_units():
    u1, u2 = linear_unit(64, 64), linear_unit(64, 128)
    m1 = meas(u1.key, [(t, 0.01 + 1e-4 * t) for t in (1, 2, 4, 8, 16, 32, 64, 128)])
    m2 = meas(u2.key, [(t, 0.02 + 2e-4 * t) for t in (1, 2, 4, 8, 16, 32, 64, 128)])
    return u1, u2, m1, m2


def test_fit_units_refits_only_changed():
    u1, u2, m1, m2 = _two_units()
    first = fit_units([u1, u2], m1 + m2)
    assert set(first) == {(u1.key, "env0"), (u2.key, "env0")}
    assert all(f.fingerprint for f in first.values())
    # re-measured (new timestamps, same values) -> same fingerprint -> reused as is
    again = fit_units([u1, u2], [Measurement(**{**m.__dict__, "timestamp": 99.0}) for m in m1 + m2], first)
    assert again[(u1.key, "env0")] is first[(u1.key, "env0")]
    assert again[(u2.key, "env0")] is first[(u2.key, "env0")]
    # u2 gains a point -> only u2 is refitted
    extra = meas(u2.key, [(256, 0.02 + 2e-4 * 256)])
    second = fit_units([u1, u2], m1 + m2 + extra, first)
    assert second[(u1.key, "env0")] is first[(u1.key, "env0")]
    assert second[(u2.key, "env0")] is not first[(u2.key, "env0")]
    assert second[(u2.key, "env0")].fingerprint != first[(u2.key, "env0")].fingerprint
    assert second[(u2.key, "env0")].points == 9
    # failed rows and unknown units are ignored
    failed = [Measurement(u1.key, "env0", {"T": 3}, status="failed", reason="oom")]
    stray = meas("linear-unknown", [(1, 1.0)])
    third = fit_units([u1, u2], m1 + m2 + extra + failed + stray, second)
    assert third[(u1.key, "env0")] is first[(u1.key, "env0")] and len(third) == 2


def test_to_json_round_trip():
    u1, u2, m1, m2 = _two_units()
    models = fit_units([u1, u2], m1 + m2)
    blob = json.loads(json.dumps(models_to_json(models)))
    back = models_from_json(blob)
    pts = [{"T": t} for t in (1, 3, 50, 128, 1000)]
    for k, fm in models.items():
        assert back[k].name == fm.name and back[k].fingerprint == fm.fingerprint
        assert np.allclose(back[k].predict(pts), fm.predict(pts))
    # every estimator kind round-trips; trees come back unfitted and refit from data
    X = np.array([[1.0], [2.0], [4.0], [8.0], [16.0], [32.0]])
    y = 0.5 + 0.1 * X[:, 0]
    for est in ESTIMATORS:
        est = clone(est).fit(X, y)
        obj = json.loads(json.dumps(est.to_json()))
        twin = estimator_from_json(obj)
        if obj["state"].get("refit"):
            assert needs_refit(twin)
            twin.fit(X, y)
        assert np.allclose(twin.predict(X), est.predict(X))


def test_tree_model_refit_from_measurements_on_load():
    rng = np.random.default_rng(4)
    pts = _attention_batches(60, rng)
    X = feature_matrix("attention", pts)
    y = 0.01 + 1e-5 * X[:, 0] + 1e-7 * X[:, 2]
    est = LogTargetTrees("gbr", n_estimators=50).fit(X, y)
    fm = FittedUnitModel("gbr_log", est, 1.0, len(y), driver="attention", unit_key="attn", env_key="e")
    rows = [Measurement("attn", "e", p, median_ms=float(v), timestamp=0.0) for p, v in zip(pts, y)]
    obj = json.loads(json.dumps(fm.to_json()))
    lazy = FittedUnitModel.from_json(obj)
    with pytest.raises(ValueError, match="refitted"):
        lazy.predict(pts[:2])
    loaded = FittedUnitModel.from_json(obj, rows)
    assert np.allclose(loaded.predict(pts), fm.predict(pts))


# ---------------------------------------------------------------- GEMM family

def test_gemm_shape_of_units():
    assert gemm_shape(linear_unit(4096, 12288)) == ("T", 4096, 12288)
    mm = Unit("aten.mm.default", (TensorSig((T(), c(512)), "float32"), TensorSig((c(512), c(256)), "float32")),
              (TensorSig((T(), c(256)), "float32"),))
    assert gemm_shape(mm) == ("T", 512, 256)
    addmm = Unit("addmm", (TensorSig((c(256),), "float32"), TensorSig((DimLabel("B", Label.REQUEST), c(512)), "float32"),
                           TensorSig((c(512), c(256)), "float32")), (TensorSig((DimLabel("B", Label.REQUEST), c(256)), "float32"),))
    assert gemm_shape(addmm) == ("B", 512, 256)
    attr_only = Unit("_C.onednn_mm", (TensorSig((T(), c(1024)), "bfloat16"),), (),
                     attrs=(("K", 1024), ("N", 3072)))
    assert gemm_shape(attr_only) == ("T", 1024, 3072)
    assert gemm_shape(Unit("vidur.add", (TensorSig((T(), c(8)), "float16"),), ())) is None


def _roofline_rows(shapes, Ms, rng):
    peak, bw, overhead = 250e12, 1.5e12, 0.008  # FLOP/s, B/s, ms
    rows = []
    for K, N in shapes:
        for M in Ms:
            flops, nbytes = 2.0 * M * K * N, 2.0 * (M * K + K * N + M * N)
            eff = 0.55 + 0.4 * min(1.0, M / 512)  # small-M under-utilisation
            t = overhead + max(flops / (peak * eff), nbytes / bw) * 1e3
            rows.append(GemmRow(M, K, N, "float16", t * rng.normal(1, 0.01), device="gpu0"))
    return rows


def test_gemm_family_holdout_error_on_synthetic_roofline():
    rng = np.random.default_rng(5)
    dims = [1024, 2048, 4096, 5120, 8192, 14336]
    shapes = [(k, n) for k in dims for n in dims]
    Ms = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    rows = _roofline_rows(shapes, Ms, rng)
    held = [(4096, 5120), (5120, 8192), (2048, 14336)]
    err = holdout_error(rows, held)
    assert err < 10
    fam = GemmFamily().fit([r for r in rows if r.shape not in held])
    assert fam.holdout_error(rows, held) == pytest.approx(err)
    p = fam.predict(np.array([64, 4096]), 4096, 4096, "float16")
    assert p.shape == (2,) and p[1] > p[0] > 0
    assert isinstance(fam.predict(64, 4096, 4096), float)
    assert GemmFamily.from_json(fam.to_json(), rows).predict(64, 4096, 4096) > 0
    with pytest.raises(ValueError, match="holdout_shapes"):
        holdout_error(rows, [(3, 3)])


def test_roofline_family_is_stored_by_its_coefficients():
    from dooly.fit.gemm_family import rows_fingerprint, shape_holdout_error
    rng = np.random.default_rng(6)
    rows = _roofline_rows([(1024, 2048), (2048, 4096), (4096, 1024)], [1, 16, 256, 2048], rng)
    fam = GemmFamily(model="roofline").fit(rows)
    blob = json.loads(json.dumps(fam.to_json()))
    back = GemmFamily.from_json(blob)  # no rows: the coefficients are the model
    assert not back.needs_refit and back.predict(96, 3072, 3072) == pytest.approx(fam.predict(96, 3072, 3072))
    boosted = GemmFamily(n_estimators=10).fit(rows).to_json()
    assert GemmFamily.from_json(boosted).needs_refit  # trees keep only their parameters
    with pytest.raises(ValueError, match="kind"):
        GemmFamily.from_json({"kind": "poly"})
    # the stated error holds each shape out in turn; the fingerprint follows rows and params
    assert shape_holdout_error(rows, **fam.params) > 0 and shape_holdout_error(rows[:4]) is None
    assert rows_fingerprint(rows, fam.params) == rows_fingerprint(rows[::-1], fam.params)
    assert rows_fingerprint(rows[1:], fam.params) != rows_fingerprint(rows, fam.params)
    assert rows_fingerprint(rows, {**fam.params, "model": "gbr"}) != rows_fingerprint(rows, fam.params)


def test_gemm_rows_from_units():
    u = linear_unit(256, 512)
    ms = meas(u.key, [(1, 0.01), (64, 0.02)]) + [Measurement(u.key, "env0", {"T": 8}, status="failed")]
    other = Unit("vidur.add", (TensorSig((T(), c(8)), "float16"),), ())
    rows = rows_from_units([u, other], ms + meas(other.key, [(1, 0.001)]), group_of={u.key: "m"})
    assert [(r.M, r.K, r.N, r.dtype, r.device, r.group) for r in rows] == \
        [(1, 256, 512, "float16", "env0", "m"), (64, 256, 512, "float16", "env0", "m")]


def test_noisy_end_segment_does_not_extrapolate_downward():
    X = np.array([[1.0], [2.0], [4.0], [8.0], [16.0]])
    y = np.array([1.0, 1.2, 1.5, 2.4, 2.2])   # the last point dips (timing noise)
    est = InterpolatingRegressor().fit(X, y)
    assert est.predict([[1000.0]])[0] >= 2.2
