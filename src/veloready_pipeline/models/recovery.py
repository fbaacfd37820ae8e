"""Recovery family: a personal XGBoost regressor for tomorrow's recovery score.

Per athlete: features (no look-ahead) -> chronological 70/15/15 split -> Optuna on the
validation part (early stopping on it caps the number of trees, so trials stay cheap)
-> refit on train+validation with the best parameters -> metrics and naive baselines
on the untouched test part -> gate verdict. Sleep score is monotone-constrained:
physiology says more sleep never lowers tomorrow's recovery, and the constraint keeps
a small personal model from learning the opposite from noise.

Cost: an athlete has ~120 training rows, so a trial is dominated by fixed per-call
overheads, not arithmetic. The train and validation matrices are therefore built once
per athlete and reused by every trial (XGBoost caches their histogram index), training
uses the native `xgb.train` on one thread (``nthread=1``: a process per core scales;
OpenMP threads on tiny data only spin), and the timing of each part is recorded for the
benchmark (`veloready_pipeline.timing`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from veloready_pipeline.config import Settings
from veloready_pipeline.features import build_recovery_features, sensor_note
from veloready_pipeline.gates import evaluate_gate, regression_metrics
from veloready_pipeline.results import ModelResult
from veloready_pipeline.split import split_chronological
from veloready_pipeline.timing import StageTotals
from veloready_pipeline.tuning import derive_seed, n_trials_for, new_study, suggest

FAMILY = "recovery"
MONOTONE_INCREASING = ("sleep_score",)
EARLY_STOPPING_ROUNDS = 20


def _booster_params(params: dict[str, Any], feature_names: list[str],
                    seed: int) -> dict[str, Any]:
    """Native XGBoost parameters (same model as ``XGBRegressor`` with these settings)."""
    mono = ",".join("1" if f in MONOTONE_INCREASING else "0" for f in feature_names)
    return {
        "objective": "reg:squarederror",
        "max_depth": int(params.get("max_depth", 3)),
        "learning_rate": float(params.get("learning_rate", 0.1)),
        "min_child_weight": float(params.get("min_child_weight", 1.0)),
        "subsample": float(params.get("subsample", 1.0)),
        "reg_lambda": float(params.get("reg_lambda", 1.0)),
        "monotone_constraints": f"({mono})",
        "tree_method": "hist",
        "nthread": 1,
        "seed": seed,
        "eval_metric": "rmse",
    }


def _matrix(X: np.ndarray, y: np.ndarray, names: list[str] | None = None) -> xgb.DMatrix:
    # Tuning matrices carry no feature names: XGBoost's Python layer re-reads and
    # compares them on every boosting round (a third of a trial's time on tiny data).
    return xgb.DMatrix(X, label=y, feature_names=list(names) if names else None, nthread=1)


def recovery_baselines(y_test: np.ndarray, today_test: np.ndarray,
                       y_fit: np.ndarray) -> dict[str, float]:
    """The naive predictions a recovery model must beat, scored on the test rows:
    tomorrow = today (persistence) and tomorrow = the mean of the rows it was fitted on."""
    return {
        "persistence_rmse": regression_metrics(y_test, today_test)["rmse"],
        "mean_rmse": regression_metrics(y_test, np.full(len(y_test), y_fit.mean()))["rmse"],
    }


def train_recovery_model(
    athlete_rows: pd.DataFrame,
    settings: Settings,
    warm_start: dict[str, Any] | None = None,
    clock: StageTotals | None = None,
) -> ModelResult:
    """Tune, fit and gate one athlete's recovery model.

    Args:
        athlete_rows: canonical rows of one athlete (already validated, cut at as-of).
        settings: the run's settings (seed, tuning, gates, min history, target).
        warm_start: last week's best parameters, tried first when configured.
        clock: adds the time of features / tune / fit / gate (benchmark only).
    """
    clock = clock or StageTotals()
    athlete_id = str(athlete_rows["athlete_id"].iloc[0])
    target = settings.recovery_target
    if target not in athlete_rows or athlete_rows[target].notna().sum() == 0:
        return ModelResult(athlete_id, FAMILY, "skipped",
                           reason=f"no {target} values: the recovery target is missing")
    with clock.part("features"):
        feats = build_recovery_features(athlete_rows, target=target)
        rows = feats.labelled()
    if len(rows) < settings.min_history_days:
        return ModelResult(
            athlete_id, FAMILY, "skipped",
            reason=(f"too little history: {len(rows)} labelled days < "
                    f"{settings.min_history_days}; the app keeps its rule-based fallback"),
            n_rows={"labelled": len(rows)},
        )
    names = feats.feature_names
    X = rows[names].to_numpy(dtype=np.float32)
    y = rows["label"].to_numpy(dtype=np.float64)
    today = rows["recovery_today"].to_numpy(dtype=np.float64)
    tr, va, te = split_chronological(len(rows))
    seed = derive_seed(settings.seed, athlete_id, FAMILY)
    space = settings.tuning.spaces[FAMILY].params
    dtrain, dval = _matrix(X[tr], y[tr]), _matrix(X[va], y[va])
    x_val, y_val = X[va], y[va]

    def objective(trial: Any) -> float:
        params = suggest(trial, space)
        booster = xgb.train(_booster_params(params, names, seed), dtrain,
                            num_boost_round=int(params.get("n_estimators", 200)),
                            evals=[(dval, "val")], early_stopping_rounds=EARLY_STOPPING_ROUNDS,
                            verbose_eval=False)
        trial.set_user_attr("best_iteration", int(booster.best_iteration))
        pred = booster.inplace_predict(x_val, iteration_range=(0, booster.best_iteration + 1))
        return float(np.sqrt(np.mean((pred - y_val) ** 2)))

    study = new_study(settings.tuning, space, seed)
    if warm_start and settings.tuning.warm_start and settings.tuning.sampler == "tpe":
        study.enqueue_trial({k: v for k, v in warm_start.items() if k in space})
    with warnings.catch_warnings(), clock.part("tune"):
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=n_trials_for(settings.tuning, space))
    best = dict(study.best_params)
    best["n_estimators"] = int(study.best_trial.user_attrs["best_iteration"]) + 1
    trval = np.concatenate([tr, va])
    with clock.part("fit"):
        booster = xgb.train(_booster_params(best, names, seed),
                            _matrix(X[trval], y[trval], names),
                            num_boost_round=best["n_estimators"])
        booster.feature_names = list(names)
        pred = booster.inplace_predict(X[te])
    with clock.part("gate"):
        metrics = regression_metrics(y[te], pred)
        metrics["val_rmse"] = float(study.best_value)
        baselines = recovery_baselines(y[te], today[te], y[trval])
        verdict = evaluate_gate(FAMILY, metrics, baselines, settings.gates[FAMILY])
    dates = rows.index
    notes = [n for n in [sensor_note(feats)] if n]
    return ModelResult(
        athlete_id=athlete_id,
        family=FAMILY,
        status="trained",
        reason=verdict.reason(),
        model=booster,
        model_kind="xgboost",
        feature_names=list(names),
        params=best | {"n_trials": len(study.trials), "sampler": settings.tuning.sampler},
        metrics=metrics,
        baselines=baselines,
        verdict=verdict,
        n_rows={"train": len(tr), "val": len(va), "test": len(te)},
        data_window={
            "start": str(dates[0].date()),
            "end": str(dates[-1].date()),
            "test_start": str(dates[te[0]].date()),
        },
        test_X=X[te],
        test_y=y[te],
        test_dates=[str(d.date()) for d in dates[te]],
        test_pred=pred,
        notes=notes,
    )


def predict_recovery(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """Predictions of a stored booster on a feature matrix in its feature order."""
    return booster.inplace_predict(np.asarray(X, dtype=np.float32))


def train_recovery_chunk(
    frame: pd.DataFrame,
    athlete_ids: Iterable[str],
    settings: Settings,
    warm_starts: dict[str, dict[str, Any]] | None = None,
) -> list[ModelResult]:
    """Train a chunk of athletes; one athlete's error never stops the others."""
    results: list[ModelResult] = []
    clock = StageTotals()
    groups = dict(tuple(frame.groupby("athlete_id", sort=False)))
    for aid in athlete_ids:
        rows = groups.get(aid)
        if rows is None:
            results.append(ModelResult(aid, FAMILY, "skipped", reason="no rows after as-of cut"))
            continue
        try:
            results.append(train_recovery_model(rows, settings, (warm_starts or {}).get(aid),
                                                clock))
        except Exception as exc:  # noqa: BLE001 - recorded, never swallowed silently
            results.append(ModelResult(aid, FAMILY, "failed",
                                       reason=f"{type(exc).__name__}: {exc}"))
    clock.flush(family=FAMILY)
    return results
