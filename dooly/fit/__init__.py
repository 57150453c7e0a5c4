"""Fit: latency models from measurements. Per-unit models chosen by cross-validated error
(`select`), their features and estimators, the GEMM family model across shapes
(`gemm_rows`: GEMM units as training rows; `gemm_family`: the model), unit families across
shapes for every kind of unit (`families`, `family_models`) with their check-point verdicts
(`checks`, `family_store`), and the engine-step model (`step_features`: what it sees of a
model and a batch; `step_model`: the regressor; `step_pool`: the calibrated steps and the
fit for a target model). Every fitted model follows scikit-learn's contract and is stored as
data: `stored` and `family_store` keep the fits in the DB's `fits` table, valid while the
fingerprint of their measurements matches (they take a Store as an argument and do not
import dooly.db). May import: numpy, scikit-learn, dooly.env, dooly.unit, dooly.symbolic,
dooly.graph.family (family keys, data only), dooly.profile.grid (request points),
dooly.profile.cost (roofline FLOPs and bytes)."""
from dooly.fit.estimators import (ConstantRegressor, InterpolatingRegressor, IsotonicInterp,
                                  LogTargetTrees, PolyLinear, estimator_from_json)
from dooly.fit.features import feature_matrix, feature_names, features
from dooly.fit.gemm_family import GemmFamily, holdout_error
from dooly.fit.gemm_rows import GemmRow, gemm_shape, rows_from_units
from dooly.fit.select import (FittedUnitModel, fingerprint, fit_units, mape_pct,
                              models_from_json, models_to_json, select_model)

__all__ = ["ConstantRegressor", "InterpolatingRegressor", "IsotonicInterp", "LogTargetTrees",
           "PolyLinear", "estimator_from_json", "feature_matrix", "feature_names", "features",
           "GemmFamily", "GemmRow", "gemm_shape", "holdout_error", "rows_from_units",
           "FittedUnitModel", "fingerprint", "fit_units", "mape_pct", "models_from_json",
           "models_to_json", "select_model"]
