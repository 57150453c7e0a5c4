"""Fit: latency models from measurements. Per-unit models chosen by cross-validated
error (`select`), their features and estimators, the GEMM family model across shapes
(`gemm_family`) and the engine-step model (`step_model`). Every fitted model follows
scikit-learn's contract and is stored as data: `stored` keeps the fits in the DB's `fits`
table, valid while the fingerprint of their measurements matches (it takes a Store as
an argument and does not import dooly.db). May import: numpy, scikit-learn,
dooly.env, dooly.unit, dooly.symbolic, dooly.profile.grid (request points)."""
from dooly.fit.estimators import (ConstantRegressor, InterpolatingRegressor, IsotonicInterp,
                                  LogTargetTrees, PolyLinear, estimator_from_json)
from dooly.fit.features import feature_matrix, feature_names, features
from dooly.fit.gemm_family import GemmFamily, GemmRow, gemm_shape, holdout_error, rows_from_units
from dooly.fit.select import (FittedUnitModel, fingerprint, fit_units, mape_pct,
                              models_from_json, models_to_json, select_model)

__all__ = ["ConstantRegressor", "InterpolatingRegressor", "IsotonicInterp", "LogTargetTrees",
           "PolyLinear", "estimator_from_json", "feature_matrix", "feature_names", "features",
           "GemmFamily", "GemmRow", "gemm_shape", "holdout_error", "rows_from_units",
           "FittedUnitModel", "fingerprint", "fit_units", "mape_pct", "models_from_json",
           "models_to_json", "select_model"]
