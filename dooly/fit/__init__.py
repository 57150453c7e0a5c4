"""Fitting latency models from measurements: per-unit models (select), a GEMM family
model across shapes (gemm_family), their features and estimators."""
from dooly.fit.estimators import (ConstantRegressor, InterpolatingRegressor, IsotonicInterp,
                                  LogTargetTrees, PolyLinear, estimator_from_json)
from dooly.fit.features import feature_matrix, feature_names, features
from dooly.fit.gemm_family import GemmFamily, GemmRow, gemm_shape, holdout_error, rows_from_units
from dooly.fit.select import (FitResult, FittedUnitModel, fingerprint, fit_units, mape_pct,
                              models_from_json, models_to_json, select_model)

__all__ = ["ConstantRegressor", "InterpolatingRegressor", "IsotonicInterp", "LogTargetTrees",
           "PolyLinear", "estimator_from_json", "feature_matrix", "feature_names", "features",
           "GemmFamily", "GemmRow", "gemm_shape", "holdout_error", "rows_from_units", "FitResult",
           "FittedUnitModel", "fingerprint", "fit_units", "mape_pct", "models_from_json",
           "models_to_json", "select_model"]
