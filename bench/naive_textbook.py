"""The naive weekly run the issue describes, for one sample of athletes: the reference cost.

"Naively (one Python loop per athlete, one Prefect task per small step) 1,000 athletes
take about ten hours." This module is that loop, written the straightforward way with
the pipeline's own building blocks, so `bench/weekly_run.py` can time it side by side
with the real flow on the same athletes and the same trial budget. Each point below is
one of the optimisations the issue lists for the real flow, *not* applied here:

* one Prefect flow run per athlete and one Prefect task per step: validate, features,
  each Optuna trial, refit, gate, MLflow logging, export (the flow: one task per chunk
  of 50 athletes and family);
* Great Expectations validation of each athlete's rows on their own (the flow: the
  whole table at once);
* each athlete and family its own Optuna study, every trial trained alone from scratch
  with no pruning and no warm start (XGBoost: the trial's ``n_estimators`` rounds;
  networks: `models.net_fit.fit_single` with the flow's epoch cap and early stopping);
  the flow batches athletes, fine-tunes from a population network and prunes;
* MLflow: a run per model with ``mlflow.<flavor>.log_model`` and its default pip
  requirement inference, a registered version per passing model, one call at a time
  (the flow: ``save_model`` with pinned requirements, one writer, chunk by chunk);
* Core ML + ONNX conversion (float32 and the configured quantized variants) of every
  trained model, before the gate decides (the flow converts only registered ones);
* one process, one thread (the flow uses both cores).

What it does *not* claim: it is not slower on purpose. It uses the same data, search
spaces, samplers, epoch caps and export code as the flow; nothing sleeps or repeats.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np


def _tasks() -> dict[str, Any]:
    """The per-step Prefect tasks (built lazily: importing Prefect is slow)."""
    from prefect import task

    @task(name="naive-validate")
    def validate(rows: Any) -> Any:
        from veloready_pipeline.validation import validate_frame

        out = validate_frame(rows)
        return out.clean

    @task(name="naive-features")
    def features(family: str, rows: Any) -> Any:
        from veloready_pipeline.features_nets import make_injury_dataset, make_zone_dataset

        return make_zone_dataset(rows) if family == "zones" else make_injury_dataset(rows)

    @task(name="naive-recovery-features")
    def recovery_features(rows: Any, settings: Any) -> Any:
        from veloready_pipeline.features import build_recovery_features

        feats = build_recovery_features(rows, target=settings.recovery_target)
        return feats.feature_names, feats.labelled()

    @task(name="naive-recovery-trial")
    def recovery_trial(params: dict[str, Any], X: np.ndarray, y: np.ndarray, tr: np.ndarray,
                       va: np.ndarray, names: list[str], seed: int) -> float:
        import xgboost as xgb

        from veloready_pipeline.models.recovery import _booster_params

        booster = xgb.train(_booster_params(params, names, seed),
                            xgb.DMatrix(X[tr], label=y[tr], feature_names=names),
                            num_boost_round=int(params.get("n_estimators", 200)))
        pred = booster.predict(xgb.DMatrix(X[va], feature_names=names))
        return float(np.sqrt(np.mean((pred - y[va]) ** 2)))

    @task(name="naive-recovery-refit")
    def recovery_refit(params: dict[str, Any], X: np.ndarray, y: np.ndarray,
                       rows_idx: np.ndarray, names: list[str], seed: int) -> Any:
        import xgboost as xgb

        from veloready_pipeline.models.recovery import _booster_params

        return xgb.train(_booster_params(params, names, seed),
                         xgb.DMatrix(X[rows_idx], label=y[rows_idx], feature_names=names),
                         num_boost_round=int(params.get("n_estimators", 200)))

    @task(name="naive-net-trial")
    def net_trial(family: str, params: dict[str, Any], data: Any, settings: Any,
                  number: int) -> tuple[Any, float]:
        from veloready_pipeline.config import TrainingConfig
        from veloready_pipeline.models.net_fit import fit_single
        from veloready_pipeline.models.net_tuning import (
            attach_stats,
            fit_config,
            init_plain,
            set_stats,
        )

        spec = _spec(family)
        attach_stats(spec, [data])
        module = init_plain(spec, params, data.x_train.shape[-1], settings.seed,
                            data.athlete_id, number)
        set_stats(module, data.stats)
        cfg = fit_config(TrainingConfig.from_settings(settings, family), family, params,
                         spec.loss)
        cfg.max_epochs = settings.tuning.population_max_epochs
        module, val, _ = fit_single(module, data.x_train, data.y_train, data.x_val,
                                    data.y_val, cfg)
        return module, val

    @task(name="naive-gate")
    def gate(result: Any, settings: Any) -> Any:
        from veloready_pipeline.families import FAMILIES

        # The family's verdict (the nets': the export stage's rule, which reads the
        # pooled keys `_net` sets).
        result.verdict = FAMILIES.get(result.family).verdict(result, result.metrics, settings)
        result.reason = result.verdict.reason()
        return result

    @task(name="naive-mlflow")
    def log_to_mlflow(result: Any, experiment: str) -> str | None:
        import mlflow

        mlflow.set_experiment(experiment)
        name = f"naive-{result.family}-{result.athlete_id}"
        with mlflow.start_run(run_name=name):
            mlflow.log_params({k: v for k, v in result.params.items()
                               if isinstance(v, int | float | str)})
            mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()
                                if v is not None and math.isfinite(float(v))})
            register = name if result.passed else None
            if result.family == "recovery":
                import pandas as pd

                info = mlflow.xgboost.log_model(
                    result.model, name="model", registered_model_name=register,
                    input_example=pd.DataFrame(result.test_X[:1],
                                               columns=result.feature_names))
            else:
                # pickle: MLflow's default 'pt2' needs torch.export, which fails on
                # LSTMs; the input example also makes MLflow infer a signature.
                info = mlflow.pytorch.log_model(
                    result.model, name="model", registered_model_name=register,
                    serialization_format="pickle",
                    input_example=np.asarray(result.test_X[:1], dtype=np.float32))
        return info.model_uri

    @task(name="naive-export")
    def export(result: Any, folder: Path, settings: Any) -> dict[str, Any]:
        from veloready_pipeline.lifecycle.convert import export_one

        return export_one(result, folder, f"naive-{result.family}-{result.athlete_id}",
                          settings)

    return {f.name.removeprefix("naive-"): f for f in
            (validate, features, recovery_features, recovery_trial, recovery_refit,
             net_trial, gate, log_to_mlflow, export)}


def _spec(family: str) -> Any:
    from veloready_pipeline.models.injury import INJURY_FAMILY
    from veloready_pipeline.models.zones import ZONE_FAMILY

    return ZONE_FAMILY if family == "zones" else INJURY_FAMILY


def _study(settings: Any, family: str, athlete_id: str) -> tuple[Any, dict[str, Any], int]:
    import optuna

    from veloready_pipeline.tuning import derive_seed, n_trials_for, new_study

    space = settings.tuning.spaces[family].params
    seed = derive_seed(settings.seed, athlete_id, family, "textbook")
    study = new_study(settings.tuning, space, seed, pruner=optuna.pruners.NopPruner())
    return study, space, n_trials_for(settings.tuning, space)


def _recovery(t: dict[str, Any], rows: Any, settings: Any) -> Any:
    from veloready_pipeline.gates import regression_metrics
    from veloready_pipeline.models.recovery import recovery_baselines
    from veloready_pipeline.results import ModelResult
    from veloready_pipeline.split import split_chronological
    from veloready_pipeline.tuning import suggest

    aid = str(rows["athlete_id"].iloc[0])
    names, lab = t["recovery-features"](rows, settings)
    if len(lab) < settings.min_history_days:
        return None
    X = lab[names].to_numpy(dtype=np.float32)
    y = lab["label"].to_numpy(dtype=np.float64)
    tr, va, te = split_chronological(len(lab))
    study, space, n = _study(settings, "recovery", aid)
    seed = settings.seed
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, space)
        study.tell(trial, t["recovery-trial"](params, X, y, tr, va, list(names), seed))
    best = dict(study.best_params)
    booster = t["recovery-refit"](best, X, y, np.concatenate([tr, va]), list(names), seed)
    import xgboost as xgb

    pred = booster.predict(xgb.DMatrix(X[te], feature_names=list(names)))
    today = lab["recovery_today"].to_numpy(dtype=np.float64)
    metrics = regression_metrics(y[te], pred)
    baselines = recovery_baselines(y[te], today[te], y[np.concatenate([tr, va])])
    return ModelResult(aid, "recovery", "trained", model=booster, model_kind="xgboost",
                       feature_names=list(names), params=best, metrics=metrics,
                       baselines=baselines, test_X=X[te], test_y=y[te], test_pred=pred)


def _net(t: dict[str, Any], family: str, rows: Any, settings: Any) -> Any:
    from veloready_pipeline.models.injury import count_onsets, evaluate_injury_model
    from veloready_pipeline.models.net_tuning import train_data
    from veloready_pipeline.models.zones import evaluate_zone_model
    from veloready_pipeline.results import ModelResult
    from veloready_pipeline.tuning import suggest

    ds = t["features"](family, rows)
    if ds.skip_reason:
        return None
    data = train_data(ds)
    study, space, n = _study(settings, family, ds.athlete_id)
    best_model, best_val, best_params = None, math.inf, {}
    for number in range(n):
        trial = study.ask()
        params = suggest(trial, space)
        model, val = t["net-trial"](family, params, data, settings, number)
        study.tell(trial, val if math.isfinite(val) else math.inf)
        if best_model is None or val < best_val:
            best_model, best_val, best_params = model, val, params
    evaluate = evaluate_zone_model if family == "zones" else evaluate_injury_model
    metrics, baselines, pred = evaluate(ds, best_model)
    te = ds.test_idx
    if family == "injury":  # one athlete alone: its own test part is the "pool"
        metrics |= {"pooled_auroc": metrics.get("auroc", math.nan),
                    "pooled_n_onsets": float(count_onsets(ds.y[te]))}
        baselines |= {"pooled_warning_score_auroc":
                      baselines.get("warning_score_auroc", math.nan)}
    return ModelResult(ds.athlete_id, family, "trained", model=best_model, model_kind="torch",
                       feature_names=list(ds.feature_names), params=best_params,
                       metrics=metrics, baselines=baselines, test_X=ds.X[te], test_y=ds.y[te],
                       test_pred=pred, extra={"baseline_score": ds.baseline[te]})


def run_athlete(rows: Any, families: list[str], settings: Any, out_dir: Path,
                experiment: str) -> dict[str, dict[str, Any]]:
    """One athlete through every step, each a Prefect task, in its own flow run.

    Returns per family: wall and CPU seconds of the family's steps (the validation task,
    run once per athlete, is charged to the first family), status and gate verdict.
    """
    from prefect import flow

    t = _tasks()
    aid = str(rows["athlete_id"].iloc[0])

    @flow(name="naive-athlete", flow_run_name=f"naive-{aid}")
    def naive_athlete() -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        w0, c0 = time.perf_counter(), time.process_time()
        clean = t["validate"](rows)
        for family in families:
            result = (_recovery(t, clean, settings) if family == "recovery"
                      else _net(t, family, clean, settings))
            if result is not None:
                result = t["gate"](result, settings)
                t["mlflow"](result, experiment)
                rec = t["export"](result, out_dir / family / aid, settings)
            w1, c1 = time.perf_counter(), time.process_time()
            error = None if result is None else rec.get("error")
            out[family] = {"wall_s": w1 - w0, "cpu_s": c1 - c0,
                           "status": "skipped" if result is None else
                           ("passed" if result.passed else "gate_failed"),
                           "shipped": None if result is None else rec.get("shipped"),
                           # a failing network has no shippable variant: not an error
                           "export_error": None if error is None or "no shippable variant"
                           in error else error}
            w0, c0 = w1, c1
        return out

    return naive_athlete()


def run_textbook(frame: Any, ids: list[str], families: list[str], settings: Any,
                 home: Path) -> dict[str, Any]:
    """The naive run on ``ids`` (one after the other) with its own MLflow store.

    Figures: per family, mean wall/CPU seconds per athlete over every sampled athlete
    (an athlete the family skips costs its cheap features step, as in the flow), plus
    the flow-run wall time of each athlete. CPU here is this process only.
    """
    import torch

    import mlflow

    torch.set_num_threads(1)
    root = home / "naive-textbook"
    root.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    experiment = "naive-textbook"
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    per: dict[str, list[dict[str, Any]]] = {f: [] for f in families}
    athletes = []
    for aid in ids:
        rows = frame[frame["athlete_id"] == aid].reset_index(drop=True)
        t = time.perf_counter()
        out = run_athlete(rows, families, settings, root / "exports", experiment)
        athletes.append({"athlete_id": aid, "wall_s": time.perf_counter() - t, **out})
        for fam, r in out.items():
            per[fam].append(r)
    families_out = {}
    for fam, rs in per.items():
        families_out[fam] = {
            "n": len(rs),
            "wall_per_athlete_s": float(np.mean([r["wall_s"] for r in rs])),
            "cpu_per_athlete_s": float(np.mean([r["cpu_s"] for r in rs])),
            "statuses": [r["status"] for r in rs],
            "export_errors": [r["export_error"] for r in rs if r.get("export_error")],
        }
    return {"sample": len(ids), "athletes": athletes, "families": families_out,
            "wall_per_athlete_s": sum(r["wall_per_athlete_s"] for r in families_out.values()),
            "cpu_per_athlete_s": sum(r["cpu_per_athlete_s"] for r in families_out.values())}
