import numpy as np
import pytest

from helpers_data import toy_athlete, toy_frame
from veloready_pipeline.config import load_settings
from veloready_pipeline.models.recovery import train_recovery_chunk, train_recovery_model


@pytest.fixture(scope="module")
def settings():
    return load_settings(tuning={"n_trials": 6})


@pytest.fixture(scope="module")
def trained(settings):
    return train_recovery_model(toy_athlete(n=160, seed=3, noise=2.0), settings)


def test_learnable_athlete_passes_and_beats_baselines(trained):
    assert trained.status == "trained"
    assert trained.passed, trained.reason
    assert trained.metrics["rmse"] < trained.baselines["persistence_rmse"]
    assert trained.metrics["rmse"] < trained.baselines["mean_rmse"]
    assert trained.n_rows["test"] == len(trained.test_y) == len(trained.test_dates)


def test_noise_only_athlete_fails_gate_honestly(settings):
    df = toy_athlete(n=160, seed=4)
    df["recovery_score"] = np.random.default_rng(0).uniform(0, 100, len(df))
    r = train_recovery_model(df, settings)
    assert r.status == "trained" and not r.passed
    assert "r2" in r.reason or "rmse" in r.reason


def test_same_seed_same_model(settings):
    df = toy_athlete(n=120, seed=5)
    a, b = train_recovery_model(df, settings), train_recovery_model(df, settings)
    assert a.params == b.params
    np.testing.assert_array_equal(a.test_pred, b.test_pred)


def test_more_sleep_never_lowers_predicted_recovery(trained):
    """Behaviour: sleep_score is monotone-constrained."""
    names = trained.feature_names
    i = names.index("sleep_score")
    X = np.repeat(trained.test_X[:5], 21, axis=0).copy()
    X[:, i] = np.tile(np.linspace(30, 100, 21), 5)
    pred = trained.model.inplace_predict(X).reshape(5, 21)
    assert np.all(np.diff(pred, axis=1) >= -1e-6)


def test_short_history_is_skipped_with_reason(settings):
    r = train_recovery_model(toy_athlete(n=60), settings)
    assert r.status == "skipped" and "too little history" in r.reason and "fallback" in r.reason


def test_grid_sampler_runs_the_grid(settings):
    s = load_settings(tuning={"sampler": "grid", "n_trials": 4, "grid_points": 2})
    r = train_recovery_model(toy_athlete(n=120, seed=6), s)
    assert r.params["sampler"] == "grid" and r.params["n_trials"] == 4


def test_chunk_isolates_a_failing_athlete(settings):
    df = toy_frame(2, n=120)
    df.loc[df["athlete_id"] == "a1", "recovery_score"] = np.nan
    out = {r.athlete_id: r for r in train_recovery_chunk(df, ["a0", "a1", "zz"], settings)}
    assert out["a0"].status == "trained"
    assert out["a1"].status == "skipped" and "recovery_score" in out["a1"].reason
    assert out["zz"].status == "skipped"
