"""XGBoost -> Core ML tree ensemble + ONNX: parity, the base-score fix, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from veloready_pipeline.export import ExportParityError, coreml
from veloready_pipeline.export.coreml import (
    evaluate_tree_spec,
    export_xgboost,
    raw_xgboost_spec,
    xgboost_base_margin,
    xgboost_exact_predictions,
)
from veloready_pipeline.export.onnx_export import run_onnx

SEED = 11
FEATURES = ["hrv_delta", "rhr_delta", "sleep_score", "tss", "tsb"]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Recovery-like rows: target around 50, some missing values."""
    rng = np.random.default_rng(SEED)
    X = rng.normal(size=(240, len(FEATURES))).astype(np.float32)
    X[rng.random(X.shape) < 0.06] = np.nan
    y = (50 + 12 * np.nan_to_num(X[:, 0]) - 4 * np.nan_to_num(X[:, 1])
         + 3 * np.nan_to_num(X[:, 2]) ** 2 + rng.normal(size=len(X)))
    return X, y


@pytest.fixture(scope="module")
def booster(data: tuple[np.ndarray, np.ndarray]) -> xgb.Booster:
    X, y = data
    model = xgb.XGBRegressor(n_estimators=40, max_depth=3, learning_rate=0.2,
                             random_state=SEED, n_jobs=1)
    model.fit(pd.DataFrame(X, columns=FEATURES), y)
    return model.get_booster()


def _predict(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    return booster.predict(xgb.DMatrix(X, feature_names=FEATURES, missing=np.nan))


def test_booster_learned_a_base_score_far_from_half(booster: xgb.Booster) -> None:
    assert xgboost_base_margin(booster) == pytest.approx(50, abs=5)


def test_raw_converter_output_is_off_by_the_base_score(booster, data) -> None:
    """Proves the fix matters: the converter as shipped predicts base_score - 0.5 too low."""
    X, _ = data
    raw = raw_xgboost_spec(booster, FEATURES)
    assert list(raw.treeEnsembleRegressor.treeEnsemble.basePredictionValue) == [0.5]
    offset = _predict(booster, X) - evaluate_tree_spec(raw, X)
    np.testing.assert_allclose(offset, xgboost_base_margin(booster) - 0.5, atol=1e-3)


def test_export_passes_parity_and_writes_both_files(booster, data, tmp_path) -> None:
    X, _ = data
    before = _predict(booster, X)
    arts = export_xgboost(booster, FEATURES, tmp_path, "recovery-a1-v1", X)

    ml, ox = arts["coreml"], arts["onnx"]
    assert ml.path == tmp_path / "recovery-a1-v1.mlmodel" and ml.path.is_file()
    assert ox.path == tmp_path / "recovery-a1-v1.onnx" and ox.path.is_file()
    assert (ml.kind, ml.variant, ox.kind) == ("coreml", "float32", "onnx")
    assert ml.input_names == ["features"] and ml.input_shapes == [[len(FEATURES)]]
    assert ml.output_names == ["prediction"] and ml.output_shapes == [[1]]
    assert ox.input_shapes == [[-1, len(FEATURES)]] and ox.output_names == ["prediction"]
    assert ml.size_bytes == ml.path.stat().st_size and len(ml.sha256) == 64

    # Independent re-checks on the shipped files (not trusting the recorded extras).
    import coremltools as ct

    shipped = ct.utils.load_spec(str(ml.path))
    assert shipped.treeEnsembleRegressor.treeEnsemble.basePredictionValue[0] == pytest.approx(
        xgboost_base_margin(booster))
    assert np.abs(evaluate_tree_spec(shipped, X, "float32") - before).max() <= 1e-4
    exact = xgboost_exact_predictions(booster, X)
    assert np.abs(evaluate_tree_spec(shipped, X, "float64") - exact).max() <= 1e-4
    onnx_pred = run_onnx(ox.path, {"features": X})[0].reshape(-1)
    assert np.abs(onnx_pred - before).max() <= 1e-4
    assert np.abs(onnx_pred - exact).max() <= 1e-4
    assert np.isnan(X).any(), "the sample must exercise missing-value routing"

    # The caller's booster is untouched (the converter mutates what it is given).
    assert booster.feature_names == FEATURES
    np.testing.assert_array_equal(_predict(booster, X), before)


def test_export_fails_loudly_when_the_base_value_is_not_fixed(booster, data, tmp_path,
                                                              monkeypatch) -> None:
    X, _ = data
    monkeypatch.setattr(coreml, "_apply_base_margin", lambda spec, booster: None)
    with pytest.raises(ExportParityError) as info:
        export_xgboost(booster, FEATURES, tmp_path, "unfixed", X)
    assert info.value.max_abs_diff == pytest.approx(xgboost_base_margin(booster) - 0.5,
                                                    abs=1e-3)
    assert "core ml" in str(info.value)


def test_exact_reference_reproduces_xgboost_rounding(booster, data) -> None:
    """Float32 tree-order summation is exactly what booster.predict does."""
    X, _ = data
    spec = raw_xgboost_spec(booster, FEATURES)
    coreml._apply_base_margin(spec, booster)
    np.testing.assert_array_equal(evaluate_tree_spec(spec, X, "float32"),
                                  _predict(booster, X).astype(np.float64))
    assert np.abs(xgboost_exact_predictions(booster, X) - _predict(booster, X)).max() < 1e-4


def test_export_is_byte_for_byte_deterministic(booster, data, tmp_path) -> None:
    X, _ = data
    a = export_xgboost(booster, FEATURES, tmp_path / "a", "m", X[:20])
    b = export_xgboost(booster, FEATURES, tmp_path / "b", "m", X[:20])
    assert a["coreml"].sha256 == b["coreml"].sha256
    assert a["onnx"].sha256 == b["onnx"].sha256


def test_tree_walk_follows_each_branch_rule() -> None:
    """Hand-built ensemble: <=, >, == rules, missing values and two trees summed."""
    from coremltools.models import datatypes
    from coremltools.models.tree_ensemble import TreeEnsembleRegressor

    tm = TreeEnsembleRegressor([("x", datatypes.Array(2))], "y")
    tm.set_default_prediction_value(10.0)
    tm.add_branch_node(0, 0, 0, 1.0, "BranchOnValueLessThanEqual", 1, 2,
                       missing_value_tracks_true_child=True)
    tm.add_leaf_node(0, 1, 1.0)
    tm.add_branch_node(0, 2, 1, 0.0, "BranchOnValueGreaterThan", 3, 4)
    tm.add_leaf_node(0, 3, 2.0)
    tm.add_leaf_node(0, 4, 3.0)
    tm.add_branch_node(1, 0, 1, 5.0, "BranchOnValueEqual", 1, 2)
    tm.add_leaf_node(1, 1, 100.0)
    tm.add_leaf_node(1, 2, 0.0)
    X = np.array([[1.0, 0.0], [np.nan, 5.0], [2.0, 1.0], [2.0, -1.0], [2.0, 5.0]])
    got = evaluate_tree_spec(tm.spec, X)
    np.testing.assert_array_equal(got, [11.0, 111.0, 12.0, 13.0, 112.0])


@pytest.mark.parametrize("bad", ["names", "sample"])
def test_mismatched_inputs_are_rejected(booster, data, tmp_path, bad) -> None:
    X, _ = data
    names = FEATURES[:-1] if bad == "names" else FEATURES
    sample = X[:, :-1] if bad == "sample" else X
    with pytest.raises(ValueError, match="features|sample"):
        export_xgboost(booster, names, tmp_path, "bad", sample)


def test_objectives_with_a_link_function_are_refused(data) -> None:
    X, y = data
    clf = xgb.XGBRegressor(n_estimators=3, objective="reg:logistic", random_state=SEED)
    clf.fit(X, (y > 50).astype(float))
    with pytest.raises(ValueError, match="reg:logistic"):
        xgboost_base_margin(clf.get_booster())


def test_parity_error_reports_nan_as_failure() -> None:
    from veloready_pipeline.export.onnx_export import check_parity

    with pytest.raises(ExportParityError, match="inf"):
        check_parity("x", np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert check_parity("x", np.array([1.0, 2.0]), np.array([1.0, 2.00001])) < 1e-4
