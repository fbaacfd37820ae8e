"""Recovery family: tomorrow's recovery score, pooled first, then personal.

Why pooled: a rider has ~125 training and ~27 validation days. Tuning ten XGBoost
settings per rider on 27 validation rows fits the validation part, not the rider
(measured on 50 realistic riders: the per-rider Optuna model beat the rider's own
mean for 48 %, one global model with rider-relative inputs for 74 %). So:

1. **Population.** Every rider's labelled rows get the recovery features plus
   rider-relative ones (own mean and SD from the rider's *training* part only,
   today's values as z-scores against them: `features.relative_feature_frame`). One
   XGBoost is fitted on all riders' training parts; its settings are tuned once per
   batch on the pooled validation parts (Optuna, in-memory study, the run's seed,
   ``tuning.recovery_population_trials`` trials, default ``tuning.n_trials``; early
   stopping on the pooled validation rows). `fit_recovery_population` does this once,
   before the chunk tasks, and its boosters are handed to every chunk.
2. **Personal.** Each rider gets a personal model: continued boosting from the
   population model on the rider's own training rows (small trees, small steps, a
   fixed number of them). Its settings (and tree count, early-stopped on the rider's
   validation rows) are tuned per rider only when the rider has at least
   ``tuning.recovery_personal_tuning_min_rows`` training rows.
3. **Pick on validation, never on test.** The rider ships the personal model only
   where validation shows it beats the population beyond chance (paired bootstrap
   lower bound of the squared-error gain above 0), else the population
   (``model_kind``). The picked model is refitted on training + validation (the
   population with its tuned number of trees, the personal trees on top of that),
   then scored once on the untouched test part.
4. **Does it help this rider?** Next to the RMSE/MAE baselines (tomorrow = today,
   tomorrow = the rider's mean), a paired bootstrap interval of the MAE gain over
   the mean baseline on the test part (`gates.paired_bootstrap_gain`).

Sleep score (and its z-score) is monotone-constrained: more sleep never lowers
tomorrow's predicted recovery. Everything runs on one thread per process
(``nthread=1``: a process per core scales, OpenMP threads on small data only spin).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from veloready_pipeline.config import TrainingConfig
from veloready_pipeline.features import (
    POPULATION_RECOVERY_FEATURES,
    athlete_baseline,
    build_recovery_features,
    relative_feature_frame,
    sensor_note,
)
from veloready_pipeline.gates import evaluate_gate, paired_bootstrap_gain, regression_metrics
from veloready_pipeline.results import ModelResult
from veloready_pipeline.split import split_chronological
from veloready_pipeline.timing import StageTotals
from veloready_pipeline.tuning import derive_seed, n_trials_for, new_study, suggest

FAMILY = "recovery"
MONOTONE_INCREASING = ("sleep_score", "sleep_score_z")
EARLY_STOPPING_ROUNDS = 20
POPULATION_EARLY_STOPPING_ROUNDS = 30
# Tried first by the population study (modest settings that already generalise).
POPULATION_START = {"max_depth": 3, "learning_rate": 0.05, "min_child_weight": 5.0,
                    "subsample": 0.8, "reg_lambda": 1.0}
# Personal trees on top of the population model: a rider's ~125 rows support only
# small, strongly regularised corrections.
PERSONAL_PARAMS = {"max_depth": 2, "learning_rate": 0.03, "min_child_weight": 5.0,
                   "subsample": 0.8, "reg_lambda": 5.0}
PERSONAL_SPACE: dict[str, list[Any]] = {"max_depth": [1, 3], "learning_rate": [0.01, 0.1],
                                        "min_child_weight": [2.0, 20.0],
                                        "reg_lambda": [1.0, 20.0]}
PERSONAL_ROUNDS = 40  # untuned personal trees (lr 0.03: ~70 % of a steady residual)
PERSONAL_MAX_ROUNDS = 200  # tuned personal trees, early-stopped on validation
PICK_LEVEL = 0.90  # two-sided, so a 95 % one-sided lower bound
OBJECTIVE = "reg:squarederror"
BOOTSTRAP_RESAMPLES = 1000


def _booster_params(params: dict[str, Any], feature_names: Sequence[str],
                    seed: int) -> dict[str, Any]:
    """Native XGBoost parameters (same model as ``XGBRegressor`` with these settings)."""
    mono = ",".join("1" if f in MONOTONE_INCREASING else "0" for f in feature_names)
    return {
        "objective": OBJECTIVE,
        "max_depth": int(params.get("max_depth", 3)),
        "learning_rate": float(params.get("learning_rate", 0.1)),
        "min_child_weight": float(params.get("min_child_weight", 1.0)),
        "subsample": float(params.get("subsample", 1.0)),
        "reg_lambda": float(params.get("reg_lambda", 1.0)),
        "monotone_constraints": f"({mono})",
        "tree_method": "hist",
        "nthread": 1,
        "seed": seed,
        # Subsampling re-seeded from (seed, round) on every round: continued boosting
        # then draws the same rows whether its base model was trained in this process
        # or arrived pickled on a Dask worker (XGBoost's random engine is otherwise
        # process state, and the personal trees would differ between the two).
        "seed_per_iteration": True,
        "eval_metric": "rmse",
    }


def _matrix(X: np.ndarray, y: np.ndarray) -> xgb.DMatrix:
    # No feature names on training matrices: XGBoost's Python layer re-reads and
    # compares them on every boosting round (a third of a fit's time on small data).
    return xgb.DMatrix(X, label=y, nthread=1)


def _rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, dtype=float) - y) ** 2)))


def recovery_baselines(y_test: np.ndarray, today_test: np.ndarray,
                       y_fit: np.ndarray) -> dict[str, float]:
    """The naive predictions a recovery model must beat, scored on the test rows:
    tomorrow = today (persistence) and tomorrow = the mean of the rows it was fitted on,
    each as RMSE and MAE (the gate checks both)."""
    persistence = regression_metrics(y_test, today_test)
    mean = regression_metrics(y_test, np.full(len(y_test), y_fit.mean()))
    return {
        "persistence_rmse": persistence["rmse"],
        "mean_rmse": mean["rmse"],
        "persistence_mae": persistence["mae"],
        "mean_mae": mean["mae"],
    }


# ------------------------------------------------------------------ per-rider data


@dataclass
class AthleteData:
    """One rider's model-ready rows in the population's feature order."""

    athlete_id: str
    X: np.ndarray  # float32 [rows, features]
    y: np.ndarray
    today: np.ndarray
    tr: np.ndarray
    va: np.ndarray
    te: np.ndarray
    dates: pd.DatetimeIndex
    baseline: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)

    @property
    def trval(self) -> np.ndarray:
        return np.concatenate([self.tr, self.va])


def prepare_athlete(athlete_rows: pd.DataFrame,
                    config: TrainingConfig) -> AthleteData | ModelResult:
    """Features, split and rider-relative inputs, or a `skipped` result saying why."""
    athlete_id = str(athlete_rows["athlete_id"].iloc[0])
    target = config.recovery_target
    if target not in athlete_rows or athlete_rows[target].notna().sum() == 0:
        return ModelResult(athlete_id, FAMILY, "skipped",
                           reason=f"no {target} values: the recovery target is missing")
    feats = build_recovery_features(athlete_rows, target=target)
    rows = feats.labelled()
    if len(rows) < config.min_history_days:
        return ModelResult(
            athlete_id, FAMILY, "skipped",
            reason=(f"too little history: {len(rows)} labelled days < "
                    f"{config.min_history_days}; the app keeps its rule-based fallback"),
            n_rows={"labelled": len(rows)},
        )
    tr, va, te = split_chronological(len(rows))
    baseline = athlete_baseline(rows, tr)
    X = relative_feature_frame(rows, baseline).to_numpy(dtype=np.float32)
    return AthleteData(
        athlete_id=athlete_id, X=X, y=rows["label"].to_numpy(dtype=np.float64),
        today=rows["recovery_today"].to_numpy(dtype=np.float64), tr=tr, va=va, te=te,
        dates=rows.index, baseline=baseline,
        notes=[n for n in [sensor_note(feats)] if n],
    )


# ------------------------------------------------------------------ population


@dataclass
class RecoveryPopulation:
    """The batch's population model, fitted once and handed to every chunk.

    ``booster_train`` saw only the training parts (it is what personal models are
    compared with on validation); ``booster_full`` is the same settings refitted on
    training + validation parts, and ``booster_shipped`` its copy carrying the feature
    names (what a rider who picks the population ships). The first two carry no names:
    personal trees continue them on unnamed matrices (see `_matrix`).
    """

    feature_names: list[str]
    params: dict[str, Any]
    booster_train: xgb.Booster
    booster_full: xgb.Booster
    booster_shipped: xgb.Booster
    val_rmse: float
    n_athletes: int
    n_rows: dict[str, int]
    n_trials: int
    sampler: str
    athlete_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the run records about the population fit."""
        return {"athletes": self.n_athletes, "rows": self.n_rows, "trials": self.n_trials,
                "val_rmse": round(self.val_rmse, 4), "params": self.params}


def fit_population_from(data: Sequence[AthleteData], config: TrainingConfig,
                        clock: StageTotals | None = None) -> RecoveryPopulation:
    """Tune on the pooled validation parts, fit on the pooled training parts, refit on both.

    Raises:
        ValueError: if ``data`` is empty.
    """
    if not data:
        raise ValueError("a recovery population needs at least one rider with enough history")
    clock = clock or StageTotals()
    names = list(POPULATION_RECOVERY_FEATURES)
    X_tr = np.concatenate([a.X[a.tr] for a in data])
    y_tr = np.concatenate([a.y[a.tr] for a in data])
    X_va = np.concatenate([a.X[a.va] for a in data])
    y_va = np.concatenate([a.y[a.va] for a in data])
    seed = derive_seed(config.seed, "population", FAMILY)
    space = config.space
    dtrain, dval = _matrix(X_tr, y_tr), _matrix(X_va, y_va)
    fits: dict[int, xgb.Booster] = {}

    def objective(trial: Any) -> float:
        params = suggest(trial, space)
        booster = xgb.train(_booster_params(params, names, seed), dtrain,
                            num_boost_round=int(params.get("n_estimators", 300)),
                            evals=[(dval, "val")],
                            early_stopping_rounds=POPULATION_EARLY_STOPPING_ROUNDS,
                            verbose_eval=False)
        trial.set_user_attr("best_iteration", int(booster.best_iteration))
        fits[trial.number] = booster
        pred = booster.inplace_predict(X_va, iteration_range=(0, booster.best_iteration + 1))
        return _rmse(pred, y_va)

    study = new_study(config.tuning, space, seed)
    if config.tuning.sampler == "tpe":
        study.enqueue_trial(_within(POPULATION_START, space))
    n_trials = n_trials_for(config.tuning.model_copy(update={
        "n_trials": config.tuning.recovery_population_trials or config.tuning.n_trials}),
        space)
    with warnings.catch_warnings(), clock.part("tune"):
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=n_trials)
    best = dict(study.best_params)
    rounds = int(study.best_trial.user_attrs["best_iteration"]) + 1
    best["n_estimators"] = rounds
    booster_train = fits[study.best_trial.number]
    booster_train = booster_train[: rounds]  # the early-stopped trees only
    with clock.part("fit"):
        booster_full = xgb.train(_booster_params(best, names, seed),
                                 _matrix(np.concatenate([X_tr, X_va]),
                                         np.concatenate([y_tr, y_va])),
                                 num_boost_round=rounds)
    shipped = booster_full.copy()
    shipped.feature_names = list(names)
    return RecoveryPopulation(
        feature_names=names, params=best, booster_train=booster_train,
        booster_full=booster_full, booster_shipped=shipped,
        val_rmse=float(study.best_value), n_athletes=len(data),
        n_rows={"train": len(y_tr), "val": len(y_va)}, n_trials=len(study.trials),
        sampler=config.tuning.sampler, athlete_ids=[a.athlete_id for a in data],
    )


def _within(start: dict[str, Any], space: dict[str, list[Any]]) -> dict[str, Any]:
    """The start trial restricted to the configured space (clipped into ranges)."""
    out: dict[str, Any] = {}
    for name, values in space.items():
        if name not in start:
            continue
        v = start[name]
        if len(values) == 2 and all(isinstance(x, int | float) for x in values):
            lo, hi = values
            v = min(max(v, lo), hi)
            out[name] = int(round(v)) if isinstance(lo, int) and isinstance(hi, int) else float(v)
        elif v in values:
            out[name] = v
    return out


def fit_recovery_population(frame: pd.DataFrame, athlete_ids: Iterable[str],
                            config: TrainingConfig) -> RecoveryPopulation | None:
    """The population stage of a run: every rider with enough history, one model.

    Returns None when no rider has enough labelled history (each chunk then reports
    its riders as skipped, with the reason).
    """
    clock = StageTotals()
    groups = dict(tuple(frame.groupby("athlete_id", sort=False)))
    data: list[AthleteData] = []
    with clock.part("features"):
        for aid in athlete_ids:
            rows = groups.get(aid)
            if rows is None:
                continue
            try:
                prepared = prepare_athlete(rows, config)
            except Exception:  # noqa: BLE001 - the chunk task reports this rider's error
                continue
            if isinstance(prepared, AthleteData):
                data.append(prepared)
    population = fit_population_from(data, config, clock) if data else None
    clock.flush(family=FAMILY, part_of="population")
    return population


# ------------------------------------------------------------------ personal + pick


def _personal(a: AthleteData, population: RecoveryPopulation, config: TrainingConfig,
              seed: int, warm_start: dict[str, Any] | None
              ) -> tuple[dict[str, Any], int, np.ndarray]:
    """The rider's personal settings, extra trees and validation predictions (trees
    fitted on the rider's training rows on top of the population's training-part
    model, early-stopped on the rider's validation rows)."""
    names = population.feature_names
    dtrain, dval = _matrix(a.X[a.tr], a.y[a.tr]), _matrix(a.X[a.va], a.y[a.va])
    base = population.booster_train
    n_base = base.num_boosted_rounds()
    x_val, y_val = a.X[a.va], a.y[a.va]

    def fit(params: dict[str, Any], early_stop: bool) -> tuple[int, np.ndarray]:
        if not early_stop:
            booster = xgb.train(_booster_params(params, names, seed), dtrain,
                                num_boost_round=PERSONAL_ROUNDS, xgb_model=base)
            return PERSONAL_ROUNDS, booster.inplace_predict(x_val)
        booster = xgb.train(_booster_params(params, names, seed), dtrain,
                            num_boost_round=PERSONAL_MAX_ROUNDS, xgb_model=base,
                            evals=[(dval, "val")], early_stopping_rounds=EARLY_STOPPING_ROUNDS,
                            verbose_eval=False)
        end = int(booster.best_iteration) + 1
        return end - n_base, booster.inplace_predict(x_val, iteration_range=(0, end))

    if len(a.tr) < config.tuning.recovery_personal_tuning_min_rows:
        # A fixed number of small steps: validation stays an unbiased judge of
        # population vs personal (nothing about these trees was chosen on it).
        params = dict(PERSONAL_PARAMS)
        rounds, pred = fit(params, early_stop=False)
        return params | {"tuned": False}, rounds, pred

    def objective(trial: Any) -> float:
        rounds, pred = fit(dict(PERSONAL_PARAMS) | suggest(trial, PERSONAL_SPACE), True)
        trial.set_user_attr("rounds", rounds)
        trial.set_user_attr("pred", pred)
        return _rmse(pred, y_val)

    study = new_study(config.tuning, PERSONAL_SPACE, seed)
    if config.tuning.sampler == "tpe":
        study.enqueue_trial(_within(PERSONAL_PARAMS, PERSONAL_SPACE))
        if warm_start and config.tuning.warm_start:
            study.enqueue_trial(_within(warm_start, PERSONAL_SPACE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=n_trials_for(config.tuning, PERSONAL_SPACE))
    params = dict(PERSONAL_PARAMS) | dict(study.best_params) | {"tuned": True}
    best = study.best_trial
    return params, int(best.user_attrs["rounds"]), np.asarray(best.user_attrs["pred"])


def train_recovery_model(
    athlete_rows: pd.DataFrame,
    config: TrainingConfig,
    warm_start: dict[str, Any] | None = None,
    clock: StageTotals | None = None,
    population: RecoveryPopulation | None = None,
) -> ModelResult:
    """Personal model, population/personal pick on validation, test metrics and gate.

    Args:
        athlete_rows: canonical rows of one athlete (already validated, cut at as-of).
        config: the family's training section (seed, tuning, gates, space, min
            history, target), from `families.base.ModelFamily.training_config`.
        warm_start: last week's personal settings, tried first when tuning per rider.
        clock: adds the time of features / tune / fit / gate (benchmark only).
        population: the batch's population model; without one (a rider trained on
            their own) a population of this one rider is fitted first.
    """
    clock = clock or StageTotals()
    with clock.part("features"):
        prepared = prepare_athlete(athlete_rows, config)
    if isinstance(prepared, ModelResult):
        return prepared
    a = prepared
    if population is None:
        population = fit_population_from([a], config, clock)
    names = population.feature_names
    seed = derive_seed(config.seed, a.athlete_id, FAMILY)
    y_va = a.y[a.va]
    pop_val_pred = population.booster_train.inplace_predict(a.X[a.va])
    pop_val = _rmse(pop_val_pred, y_va)
    with clock.part("tune"):
        personal, rounds, personal_val_pred = _personal(a, population, config, seed,
                                                        warm_start)
    personal_val = _rmse(personal_val_pred, y_va)
    # Personal only where validation shows it helps beyond chance: the paired bootstrap
    # lower bound of its squared-error gain over the population model is above zero.
    # (Its trees were early-stopped on these rows, so a plain "lower RMSE" would pick
    # it for most riders by luck: measured, that hurt the test part on 3 of 3 seeds.)
    val_gain = paired_bootstrap_gain((pop_val_pred - y_va) ** 2, (personal_val_pred - y_va) ** 2,
                                     BOOTSTRAP_RESAMPLES,
                                     derive_seed(config.seed, a.athlete_id, FAMILY, "pick"),
                                     level=PICK_LEVEL)
    kind = "personal" if rounds > 0 and val_gain["low"] > 0 else "population"
    trval = a.trval
    with clock.part("fit"):
        if kind == "personal":
            booster = xgb.train(_booster_params(personal, names, seed),
                                _matrix(a.X[trval], a.y[trval]), num_boost_round=rounds,
                                xgb_model=population.booster_full)
            booster.feature_names = list(names)
        else:
            booster = population.booster_shipped
        pred = booster.inplace_predict(a.X[a.te])
    with clock.part("gate"):
        y_te = a.y[a.te]
        metrics = regression_metrics(y_te, pred)
        metrics["val_rmse"] = personal_val if kind == "personal" else pop_val
        baselines = recovery_baselines(y_te, a.today[a.te], a.y[trval])
        mean_pred = np.full(len(y_te), a.y[trval].mean())
        gain = paired_bootstrap_gain(np.abs(mean_pred - y_te), np.abs(pred - y_te),
                                     BOOTSTRAP_RESAMPLES,
                                     derive_seed(config.seed, a.athlete_id, FAMILY, "ci"))
        metrics |= {"mae_gain": gain["gain"], "mae_gain_ci_low": gain["low"],
                    "mae_gain_ci_high": gain["high"]}
        verdict = evaluate_gate(FAMILY, metrics, baselines, config.gates)
    params: dict[str, Any] = {
        **population.params,
        "model_kind": kind,
        "n_trials": population.n_trials,
        "sampler": population.sampler,
        "population_athletes": population.n_athletes,
        "population_val_rmse": round(population.val_rmse, 6),
        "val_rmse_population": round(pop_val, 6),
        "val_rmse_personal": round(personal_val, 6),
        "personal_rounds": rounds if kind == "personal" else 0,
        "personal_tuned": bool(personal.get("tuned")),
        "athlete_baseline": json.dumps(_rounded(a.baseline), sort_keys=True),
    }
    if kind == "personal":
        params |= {f"personal_{k}": v for k, v in personal.items() if k != "tuned"}
    return ModelResult(
        athlete_id=a.athlete_id,
        family=FAMILY,
        status="trained",
        reason=verdict.reason(),
        model=booster,
        model_kind="xgboost",
        feature_names=list(names),
        params=params,
        metrics=metrics,
        baselines=baselines,
        verdict=verdict,
        n_rows={"train": len(a.tr), "val": len(a.va), "test": len(a.te)},
        data_window={
            "start": str(a.dates[0].date()),
            "end": str(a.dates[-1].date()),
            "test_start": str(a.dates[a.te[0]].date()),
        },
        test_X=a.X[a.te],
        test_y=y_te,
        test_dates=[str(d.date()) for d in a.dates[a.te]],
        test_pred=pred,
        notes=a.notes,
        extra={"model_kind": kind, "athlete_baseline": _rounded(a.baseline)},
    )


def _rounded(baseline: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    return {s: {k: (round(v, 4) if np.isfinite(v) else None) for k, v in b.items()}
            for s, b in baseline.items()}


def train_recovery_chunk(
    frame: pd.DataFrame,
    athlete_ids: Iterable[str],
    config: TrainingConfig,
    warm_starts: dict[str, dict[str, Any]] | None = None,
    population: RecoveryPopulation | None = None,
) -> list[ModelResult]:
    """Train a chunk of athletes; one athlete's error never stops the others.

    ``population`` is the batch's population model (`fit_recovery_population`, fitted
    once before the chunks); without one, it is fitted on this chunk's riders.
    """
    ids = list(athlete_ids)
    results: list[ModelResult] = []
    clock = StageTotals()
    if population is None:
        population = fit_recovery_population(frame, ids, config)
    groups = dict(tuple(frame.groupby("athlete_id", sort=False)))
    for aid in ids:
        rows = groups.get(aid)
        if rows is None:
            results.append(ModelResult(aid, FAMILY, "skipped", reason="no rows after as-of cut"))
            continue
        try:
            if population is None:  # nobody in the batch has enough history
                prepared = prepare_athlete(rows, config)
                results.append(prepared if isinstance(prepared, ModelResult) else ModelResult(
                    aid, FAMILY, "failed", reason="no population model was fitted"))
                continue
            results.append(train_recovery_model(rows, config, (warm_starts or {}).get(aid),
                                                clock, population))
        except Exception as exc:  # noqa: BLE001 - recorded, never swallowed silently
            results.append(ModelResult(aid, FAMILY, "failed",
                                       reason=f"{type(exc).__name__}: {exc}"))
    clock.flush(family=FAMILY)
    return results
