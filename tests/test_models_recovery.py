import numpy as np
import pytest

from helpers_data import toy_athlete, toy_frame
from veloready_pipeline.config import TrainingConfig, load_settings
from veloready_pipeline.features import POPULATION_RECOVERY_FEATURES
from veloready_pipeline.models.recovery import (
    AthleteData,
    fit_recovery_population,
    prepare_athlete,
    train_recovery_chunk,
    train_recovery_model,
)


def _config(**overrides):
    """The recovery family's training section of settings built from ``overrides``."""
    return TrainingConfig.from_settings(load_settings(**overrides), "recovery")

@pytest.fixture(scope="module")
def config():
    return _config(tuning={"n_trials": 6, "recovery_population_trials": 6})


@pytest.fixture(scope="module")
def trained(config):
    return train_recovery_model(toy_athlete(n=160, seed=3, noise=2.0), config)


def test_learnable_athlete_passes_and_beats_baselines(trained):
    assert trained.status == "trained"
    assert trained.passed, trained.reason
    assert trained.metrics["rmse"] < trained.baselines["persistence_rmse"]
    assert trained.metrics["rmse"] < trained.baselines["mean_rmse"]
    assert trained.n_rows["test"] == len(trained.test_y) == len(trained.test_dates)


def test_noise_only_athlete_fails_gate_honestly(config):
    df = toy_athlete(n=160, seed=4)
    df["recovery_score"] = np.random.default_rng(0).uniform(0, 100, len(df))
    r = train_recovery_model(df, config)
    assert r.status == "trained" and not r.passed
    assert "r2" in r.reason or "rmse" in r.reason


def test_same_seed_same_model(config):
    df = toy_athlete(n=120, seed=5)
    a, b = train_recovery_model(df, config), train_recovery_model(df, config)
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


def test_short_history_is_skipped_with_reason(config):
    r = train_recovery_model(toy_athlete(n=60), config)
    assert r.status == "skipped" and "too little history" in r.reason and "fallback" in r.reason


def test_grid_sampler_runs_the_grid(config):
    s = _config(tuning={"sampler": "grid", "recovery_population_trials": 4,
                        "grid_points": 2})
    r = train_recovery_model(toy_athlete(n=120, seed=6), s)
    assert r.params["sampler"] == "grid" and r.params["n_trials"] == 4


def test_chunk_isolates_a_failing_athlete(config):
    df = toy_frame(2, n=120)
    df.loc[df["athlete_id"] == "a1", "recovery_score"] = np.nan
    out = {r.athlete_id: r for r in train_recovery_chunk(df, ["a0", "a1", "zz"], config)}
    assert out["a0"].status == "trained"
    assert out["a1"].status == "skipped" and "recovery_score" in out["a1"].reason
    assert out["zz"].status == "skipped"


def test_mae_baselines_and_gain_interval_are_reported(trained):
    b, m = trained.baselines, trained.metrics
    assert set(b) == {"persistence_rmse", "mean_rmse", "persistence_mae", "mean_mae"}
    y, today = trained.test_y, trained.test_X[:, 0]  # recovery_today is the first input
    assert b["persistence_mae"] == pytest.approx(np.mean(np.abs(today - y)))
    # The gate checks every baseline in RMSE and MAE.
    names = {c.name for c in trained.verdict.checks}
    assert {"beats mean_mae", "beats persistence_mae", "beats mean_rmse"} <= names
    # Gain over the mean baseline on test MAE, with its interval around it.
    assert m["mae_gain"] == pytest.approx(b["mean_mae"] - m["mae"])
    assert m["mae_gain_ci_low"] < m["mae_gain"] < m["mae_gain_ci_high"]
    assert m["mae_gain_ci_low"] > 0  # a learnable athlete: the model clearly helps


def _athletes(n, seed=0, noise=3.0):
    import pandas as pd

    return pd.concat([toy_athlete(f"p{i}", n=150, seed=seed + i, noise=noise)
                      for i in range(n)], ignore_index=True)


def test_relative_inputs_use_the_training_part_only(config):
    df = toy_athlete("r", n=150, seed=11)
    a = prepare_athlete(df, config)
    assert isinstance(a, AthleteData)
    changed = df.copy()
    later = changed.index[changed["date"] > df["date"].iloc[0] + np.timedelta64(120, "D")]
    changed.loc[later, ["recovery_score", "sleep_score", "hrv_ms"]] += 40.0
    b = prepare_athlete(changed, config)
    # Rows after the training part changed; the rider's constants did not.
    assert a.baseline == b.baseline
    i = list(POPULATION_RECOVERY_FEATURES).index("own_recovery_mean")
    assert np.all(a.X[:, i] == a.X[0, i])
    assert a.X[0, i] == pytest.approx(a.y[a.tr].mean(), abs=5)  # today's vs tomorrow's


def test_population_fitted_once_and_shared_by_chunks(config):
    df = _athletes(4, seed=20)
    ids = sorted(df["athlete_id"].unique())
    pop = fit_recovery_population(df, ids, config)
    assert pop.n_athletes == 4 and pop.n_trials == 6
    assert pop.n_rows["train"] == sum(len(prepare_athlete(df[df.athlete_id == a],
                                                          config).tr) for a in ids)
    first = train_recovery_chunk(df, ids[:2], config, population=pop)
    second = train_recovery_chunk(df, ids[2:], config, population=pop)
    whole = train_recovery_chunk(df, ids, config, population=pop)
    split = {r.athlete_id: r for r in first + second}
    for r in whole:
        assert r.extra["model_kind"] in ("population", "personal")
        assert r.params["model_kind"] == r.extra["model_kind"]
        assert r.params["population_athletes"] == 4
        np.testing.assert_array_equal(r.test_pred, split[r.athlete_id].test_pred)
    # The pooled-then-personal model passes on learnable riders.
    assert sum(r.passed for r in whole) >= 3, [r.reason for r in whole]


def test_population_rider_ships_the_population_model(config):
    df = _athletes(3, seed=30)
    ids = sorted(df["athlete_id"].unique())
    pop = fit_recovery_population(df, ids, config)
    for r in train_recovery_chunk(df, ids, config, population=pop):
        if r.extra["model_kind"] == "population":
            np.testing.assert_allclose(r.test_pred, pop.booster_shipped.inplace_predict(r.test_X))
        else:
            assert r.model.num_boosted_rounds() == (pop.booster_full.num_boosted_rounds()
                                                    + r.params["personal_rounds"])


def test_personal_trees_are_tuned_only_with_enough_rows():
    few = _config(tuning={"n_trials": 3, "recovery_population_trials": 3})
    many = _config(tuning={"n_trials": 3, "recovery_population_trials": 3,
                           "recovery_personal_tuning_min_rows": 50})
    df = toy_athlete("t", n=150, seed=8)
    assert train_recovery_model(df, few).params["personal_tuned"] is False
    assert train_recovery_model(df, many).params["personal_tuned"] is True


def test_model_worse_than_its_mean_is_never_passed(config):
    """A rider whose tomorrow is unrelated to anything: no model may pass by RMSE alone."""
    df = _athletes(3, seed=40)
    rng = np.random.default_rng(1)
    df.loc[df.athlete_id == "p0", "recovery_score"] = rng.normal(60, 2.0, 150)
    for r in train_recovery_chunk(df, sorted(df.athlete_id.unique()), config):
        if r.passed:
            assert r.metrics["rmse"] < r.baselines["mean_rmse"]
            assert r.metrics["mae"] < r.baselines["mean_mae"]
