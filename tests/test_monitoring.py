"""Live monitoring: drift rules on inline rows, the prediction store, and the daily flow
on simulated athletes where one athlete's physiology changes after training."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from veloready_pipeline.config import MonitoringSettings, TrainingConfig, load_settings
from veloready_pipeline.monitoring import (
    ChampionModel,
    PredictionStore,
    drift_reasons,
    live_metrics,
)


def _client(settings):
    """A client on this test's store for runs *and* models (MLflow's registry URI is a
    process-wide setting that an earlier test may have pointed elsewhere)."""
    from mlflow.tracking import MlflowClient

    uri = settings.mlflow_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


CFG = MonitoringSettings(window_days=14, min_outcomes=7, mae_ratio=1.5, persist_days=3,
                         confidence_z=1.645)


def _champ(aid: str, version: str = "1", test_mae: float = 3.0) -> ChampionModel:
    return ChampionModel(aid, "recovery", f"veloready-recovery-{aid}", version, "run",
                         test_mae, test_mae * 1.25, "2026-01-01", "2026-03-01", "2026-02-10")


def _series(aid: str, days: int, err: np.ndarray, version: str = "1",
            start: str = "2026-03-02") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and outcomes of one athlete: the prediction misses by ``err``."""
    target = pd.date_range(start, periods=days, freq="D")
    actual = 60 + 10 * np.sin(np.arange(days) / 3.0)
    preds = pd.DataFrame({
        "athlete_id": aid, "family": "recovery", "registry_name": f"veloready-recovery-{aid}",
        "model_version": version, "feature_date": target - pd.Timedelta(days=1),
        "target_date": target, "prediction": actual + err,
        "persistence": np.roll(actual, 1), "athlete_mean": 60.0,
    })
    outcomes = pd.DataFrame({"athlete_id": aid, "date": target, "recovery_score": actual})
    return preds, outcomes


def _noise(days: int, scale: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, days)


@pytest.mark.parametrize(
    ("errors", "mean_errors", "test_mae", "expected"),
    [
        ([3.0] * 14, [8.0] * 14, 3.0, []),  # as good as on test
        ([9.0] * 14, [20.0] * 14, 3.0, ["mae_ratio"]),  # 3x the test MAE
        ([9.0] * 14, [5.0] * 14, 10.0, ["worse_than_mean"]),  # behind the mean baseline
        ([9.0] * 6, [5.0] * 6, 3.0, []),  # too few outcomes to judge
        ([4.4, 4.8] * 7, [9.0] * 14, 3.0, ["mae_ratio"]),  # 1.53x with a tiny spread
        ([9.0] * 14, [9.0, 2.0] * 7, 10.0, ["worse_than_mean"]),  # paired: worse on average
    ],
)
def test_drift_rules(errors, mean_errors, test_mae, expected):
    got = drift_reasons(np.array(errors), np.array(mean_errors), test_mae, CFG)
    assert [r.split(":")[0] for r in got] == expected


def test_noisy_window_barely_above_threshold_is_not_drift():
    errs = np.array([0.2, 9.2] * 7)  # MAE 4.7 > 1.5 x 3.0, but very spread out
    assert drift_reasons(errs, None, 3.0, CFG) == []
    plain = CFG.model_copy(update={"confidence_z": 0.0})
    assert [r.split(":")[0] for r in drift_reasons(errs, None, 3.0, plain)] == ["mae_ratio"]


def test_live_metrics_flag_only_the_athlete_whose_errors_jump():
    days = 40
    p_ok, o_ok = _series("ok", days, _noise(days, 3.5, 1))
    jump = _noise(days, 3.5, 2)
    jump[20:] += 20.0  # from day 21 on, the model is 20 points off
    p_bad, o_bad = _series("bad", days, jump)
    preds, outs = pd.concat([p_ok, p_bad]), pd.concat([o_ok, o_bad])
    daily, statuses = live_metrics(preds, outs, {"ok": _champ("ok"), "bad": _champ("bad")}, CFG)
    by = {s.athlete_id: s for s in statuses}
    assert not by["ok"].flagged and by["ok"].first_flagged is None
    assert by["bad"].flagged and "mae_ratio" in by["bad"].reasons[0]
    change = dt.date(2026, 3, 2) + dt.timedelta(days=20)
    first = dt.date.fromisoformat(by["bad"].first_flagged)
    assert change <= first <= change + dt.timedelta(days=CFG.window_days)
    assert not daily[daily["athlete_id"] == "ok"]["flagged"].any()
    bad = daily[daily["athlete_id"] == "bad"].set_index("day")
    # The window MAE reacts: before the jump it is near the test MAE, after well above.
    assert bad.loc["2026-03-21", "live_mae"] < 4.5 < bad.loc["2026-04-10", "live_mae"]
    assert by["bad"].n_window == 14 and by["bad"].n_total == days
    assert by["bad"].persistence_mae is not None and by["bad"].mean_mae is not None


def test_only_the_current_champions_predictions_count_and_gaps_are_handled():
    p_old, o = _series("a", 30, np.full(30, 25.0), version="1")  # the old champion was bad
    p_new, _ = _series("a", 30, np.full(30, 1.0), version="2")
    o = o.drop(index=range(10, 16))  # six days without outcomes (wearable off)
    _, statuses = live_metrics(pd.concat([p_old, p_new]), o, {"a": _champ("a", "2")}, CFG)
    (st,) = statuses
    assert st.version == "2" and not st.flagged and st.live_mae == pytest.approx(1.0)
    assert st.n_total == 24


def test_persist_days_hold_back_a_short_spike():
    err = _noise(40, 1.0, 3)
    err[25:27] += 60.0  # two wild days inflate the window MAE, but not for long enough
    p, o = _series("s", 40, err)
    plain = CFG.model_copy(update={"confidence_z": 0.0})
    daily, (st,) = live_metrics(p, o, {"s": _champ("s")},
                                plain.model_copy(update={"persist_days": 20}))
    assert daily["streak"].max() == 15  # days 25-26 stay in a 14-day window for 15 days
    assert not daily["flagged"].any() and not st.flagged
    daily, (st,) = live_metrics(p, o, {"s": _champ("s")}, plain)  # 3 days suffice
    assert daily["flagged"].any() and st.first_flagged == "2026-03-29"  # 3rd day


def test_no_scored_predictions_yet_is_reported_not_flagged():
    p, _ = _series("n", 5, np.zeros(5))
    o = pd.DataFrame({"athlete_id": ["n"], "date": [pd.Timestamp("2025-01-01")],
                      "recovery_score": [50.0]})
    _, (st,) = live_metrics(p, o, {"n": _champ("n")}, CFG)
    assert not st.flagged and st.reasons == ["no scored predictions yet"]


def test_prediction_store_is_idempotent(tmp_path):
    store = PredictionStore(f"sqlite:///{tmp_path / 'p.db'}")
    p, _ = _series("a", 5, np.zeros(5))
    rows = p.assign(feature_date=p["feature_date"].dt.date,
                    target_date=p["target_date"].dt.date).to_dict("records")
    assert store.add(rows) == 5
    assert store.add(rows) == 0  # the same days again store nothing
    assert store.add(rows[:2] + [rows[0] | {"model_version": "2"}]) == 1
    loaded = store.load("recovery")
    assert len(loaded) == 6 and set(loaded["model_version"]) == {"1", "2"}
    last = store.last_feature_dates("recovery")
    assert last[("a", "1")] == rows[-1]["feature_date"]
    assert store.load("zones").empty
    store.dispose()


def test_serving_computes_the_pooled_models_relative_inputs_as_training_did():
    """The champion's live predictions use the same athlete-relative inputs as training
    (own mean/SD from the run's ``athlete_baseline``, which is also the Core ML export's
    ``veloready.athlete_baseline``): on its test days they equal its test predictions."""
    import json

    from helpers_data import toy_athlete
    from veloready_pipeline.features import RELATIVE_FEATURES
    from veloready_pipeline.models.recovery import train_recovery_model
    from veloready_pipeline.monitoring import _parse_baseline, predict_recovery_days

    settings = load_settings(tuning={"n_trials": 2, "recovery_population_trials": 2})
    rows = toy_athlete(n=120, seed=5, noise=2.0)
    r = train_recovery_model(rows, TrainingConfig.from_settings(settings, "recovery"))
    assert set(RELATIVE_FEATURES) <= set(r.model.feature_names)
    # one set of constants: run param (monitoring) == export metadata (the phone)
    assert r.params["athlete_baseline"] == json.dumps(r.extra["athlete_baseline"],
                                                      sort_keys=True)
    baseline, problem = _parse_baseline(r.params["athlete_baseline"])
    assert problem is None
    aid = str(rows["athlete_id"].iloc[0])
    champ = ChampionModel(aid, "recovery", "m", "1", "run", r.metrics["mae"],
                          r.metrics["rmse"], r.data_window["start"], r.data_window["end"],
                          r.data_window["test_start"], baseline)
    first, last = (dt.date.fromisoformat(d) for d in (r.test_dates[0], r.test_dates[-1]))
    live = predict_recovery_days(rows, champ, r.model, first, last)
    by_day = {p["feature_date"].isoformat(): p["prediction"] for p in live}
    assert list(by_day) == r.test_dates
    got = np.array([by_day[d] for d in r.test_dates])
    assert np.max(np.abs(got - r.test_pred)) < 1e-3  # constants rounded to 4 decimals
    # without the constants the inputs cannot be built: a clear error, not a silent skip
    blind = ChampionModel(aid, "recovery", "m", "1", "run", 3.0, 4.0, "", "", "")
    with pytest.raises(ValueError, match="athlete_baseline"):
        predict_recovery_days(rows, blind, r.model, first, last)


# ------------------------------------------------------------------ the daily flow


SEED = 21
TRAIN_DAYS = 140  # the champion is trained on days 0..139
CHANGE_DAY = 147  # one athlete's physiology changes a week after that
DAYS = 180


@pytest.mark.slow
def test_monitoring_flow_flags_only_the_athlete_whose_physiology_changed(
        veloready_home, prefect_api):

    from flows.monitoring import daily_monitoring
    from veloready_pipeline import ingest, training
    from veloready_pipeline.lifecycle.registry import register_results
    from veloready_pipeline.simulate import simulate_athletes

    sim = simulate_athletes(4, DAYS, seed=SEED, profile="easy")
    frame = sim.frame
    start = frame["date"].min()
    settings = load_settings(seed=SEED, tuning={"n_trials": 3},
                             monitoring={"drift_action": "rollback"})
    as_of = (start + pd.Timedelta(days=TRAIN_DAYS - 1)).date().isoformat()
    ids = sorted(frame["athlete_id"].unique())
    results = training.train_family("recovery", ingest.cut_as_of(frame, as_of), ids, settings)
    outcomes = register_results(results, settings, data_hash="sim", lineage={},
                                score_fn=training.score_model)
    champions = sorted(o.athlete_id for o in outcomes if o.champion)
    assert len(champions) >= 3, [r.reason for r in results]

    # After training, athlete X's recovery now sits 20 points lower for the same
    # physiology (e.g. overreaching): the model it shipped with no longer fits.
    drifted = champions[1]
    change = start + pd.Timedelta(days=CHANGE_DAY)
    changed = frame.copy()
    sel = (changed["athlete_id"] == drifted) & (changed["date"] >= change)
    changed.loc[sel, "recovery_score"] = (changed.loc[sel, "recovery_score"] - 20).clip(0, 100)
    path = veloready_home / "data" / "athletes.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    changed.to_parquet(path, index=False)

    # Run "daily" one window after the change: only the changed athlete is flagged.
    window_end = (change + pd.Timedelta(days=settings.monitoring.window_days)).date()
    out = daily_monitoring(settings=settings, data=str(path), as_of=window_end.isoformat())
    assert out["flagged"] == [drifted], out["statuses"]
    status = {s["athlete_id"]: s for s in out["statuses"]}
    first = dt.date.fromisoformat(status[drifted]["first_flagged"])
    assert change.date() <= first <= window_end
    assert all(status[a]["first_flagged"] is None for a in champions if a != drifted)
    assert out["predictions"]["stored"] > 0 and not out["predictions"]["errors"]
    # The trigger ran once: no previous champion to roll back to, so it is refused.
    assert out["actions"][drifted].startswith("rollback refused")

    # The next run catches up to the end of the data; nothing is stored twice and the
    # action is not repeated for the same model version.
    again = daily_monitoring(settings=settings, data=str(path))
    assert again["flagged"] == [drifted]
    assert again["actions"][drifted].startswith("flagged (action already taken")
    client = _client(settings)
    name = next(s["registry_name"] for s in again["statuses"] if s["athlete_id"] == drifted)
    version = next(s["version"] for s in again["statuses"] if s["athlete_id"] == drifted)
    tags = client.get_model_version(name, version).tags
    assert tags["drift_flag"] == "true" and tags["drift_action_taken"] == "rollback"
    history = client.get_metric_history(again["mlflow_runs"][drifted], "live_mae")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)) > 20  # one point per day, none logged twice
    ok = next(a for a in champions if a != drifted)
    assert client.get_model_version(
        registered_name_for(settings, ok), "1").tags["drift_flag"] == "false"


def registered_name_for(settings, athlete_id):
    from veloready_pipeline.lifecycle.store import registered_name

    return registered_name(settings, "recovery", athlete_id)
