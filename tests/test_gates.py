import math

import numpy as np
import pytest

from veloready_pipeline.config import GateThresholds
from veloready_pipeline.gates import evaluate_gate, paired_bootstrap_gain, regression_metrics

T = GateThresholds(rmse_max=8, mae_max=6, r2_min=0.7)
BASE = {"persistence_rmse": 12.0, "mean_rmse": 10.0}


def test_gate_passes_when_every_check_passes():
    v = evaluate_gate("recovery", {"rmse": 5, "mae": 4, "r2": 0.8}, BASE, T)
    assert v.passed
    assert v.reason().startswith("passed")
    assert len(v.checks) == 5


@pytest.mark.parametrize(
    "metrics,failing,by",
    [
        ({"rmse": 9.5, "mae": 4, "r2": 0.8}, "rmse", 1.5),
        ({"rmse": 5, "mae": 6.25, "r2": 0.8}, "mae", 0.25),
        ({"rmse": 5, "mae": 4, "r2": 0.6}, "r2", 0.1),
    ],
)
def test_gate_names_the_failing_metric_and_margin(metrics, failing, by):
    v = evaluate_gate("recovery", metrics, BASE, T)
    assert not v.passed
    assert [c.name for c in v.failures] == [failing]
    assert abs(v.failures[0].margin) == pytest.approx(by)
    assert failing in v.reason() and f"{by:.3f}" in v.reason()


def test_gate_requires_beating_each_baseline():
    v = evaluate_gate("recovery", {"rmse": 7.0, "mae": 4, "r2": 0.75},
                      {"persistence_rmse": 9.0, "mean_rmse": 6.5}, T)
    assert not v.passed
    assert [c.name for c in v.failures] == ["beats mean_rmse"]
    assert "does not beat baseline 6.500" in v.reason()


def test_nan_metric_fails_rather_than_passes():
    v = evaluate_gate("recovery", {"rmse": math.nan, "mae": 4, "r2": 0.8}, BASE, T)
    assert not v.passed


def test_auroc_baseline_higher_is_better():
    t = GateThresholds(auroc_min=0.75)
    good = evaluate_gate("injury", {"auroc": 0.8, "brier": 0.1},
                         {"warning_score_auroc": 0.7, "base_rate_brier": 0.12}, t)
    bad = evaluate_gate("injury", {"auroc": 0.8, "brier": 0.1},
                        {"warning_score_auroc": 0.85, "base_rate_brier": 0.12}, t)
    assert good.passed
    assert not bad.passed and bad.failures[0].name == "beats warning_score_auroc"
    # The verdict states the AUROCs as they are (not negated) and by how much it missed.
    check = bad.failures[0]
    assert (check.value, check.threshold) == (0.8, 0.85)
    assert check.margin == pytest.approx(-0.05)
    assert check.describe() == ("beats warning_score_auroc: model 0.800 does not beat "
                                "baseline 0.850 (by 0.050)")
    assert good.checks[-1].margin == pytest.approx(0.1)


def test_no_checks_never_passes():
    v = evaluate_gate("x", {}, {}, GateThresholds(must_beat_baselines=False))
    assert not v.passed


def test_regression_metrics_known_values():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert m["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / 2)


def test_gate_checks_mae_against_each_baseline_too():
    """Beating the mean on RMSE but not on MAE (a few large misses avoided, many small
    ones made) fails, naming the MAE baseline."""
    base = {"persistence_rmse": 12.0, "mean_rmse": 7.5,
            "persistence_mae": 9.0, "mean_mae": 4.8}
    v = evaluate_gate("recovery", {"rmse": 7.0, "mae": 5.0, "r2": 0.75}, base, T)
    assert not v.passed
    assert [c.name for c in v.failures] == ["beats mean_mae"]
    assert "beats mean_mae: model 5.000 does not beat baseline 4.800" in v.reason()
    ok = evaluate_gate("recovery", {"rmse": 7.0, "mae": 4.5, "r2": 0.75}, base, T)
    assert ok.passed and len(ok.checks) == 7


def test_paired_bootstrap_gain_interval():
    rng = np.random.default_rng(0)
    base = np.abs(rng.normal(0, 10, 200))
    better = base * 0.5
    g = paired_bootstrap_gain(base, better, 1000, seed=3)
    assert g["gain"] == pytest.approx(np.mean(base - better))
    assert 0 < g["low"] < g["gain"] < g["high"]
    # Same seed, same interval; no difference -> an interval around zero.
    assert paired_bootstrap_gain(base, better, 1000, seed=3) == g
    noise = paired_bootstrap_gain(base, rng.permutation(base), 1000, seed=3)
    assert noise["low"] < 0 < noise["high"]
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap_gain(base, better[:10], 100, seed=1)
    assert math.isnan(paired_bootstrap_gain(np.array([]), np.array([]), 10, 1)["gain"])
