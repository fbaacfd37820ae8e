"""Live monitoring of champions: stored predictions against the outcomes that followed.

Why: a test part of a few weeks says how a model did *before* it shipped. Physiology,
devices and habits change, so every day the champion's prediction for tomorrow is
stored, and once tomorrow's recovery arrives it is scored. Over a rolling window the
live MAE/RMSE are compared with

* the model's own test MAE (from its registry version), and
* the naive baselines on the same days: persistence (tomorrow = today) and the
  athlete's mean over the model's training window (the gate's mean baseline).

A window breaks a rule when, with at least ``min_outcomes`` scored days in it, the
live MAE exceeds ``mae_ratio`` x the test MAE (rule ``mae_ratio``), or is worse than
the athlete's mean baseline (rule ``worse_than_mean``), each by more than
``confidence_z`` standard errors (14 outcomes are a small sample). Drift is flagged once windows
break a rule on ``persist_days`` consecutive days, so one bad day is not an alarm.

Only the recovery family is monitored: it gets an outcome every day, whereas FTP
tests (zones) and injuries are weeks apart and cannot fill a 14-day window.

Predictions live in one SQLAlchemy table (SQLite under ``data/predictions.db`` by
default, any URL by ``paths.prediction_store_url``); rows are unique per athlete,
family, model version and target day, so re-running a day stores nothing twice.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from veloready_pipeline.config import MonitoringSettings, Settings

MONITORED_FAMILIES: tuple[str, ...] = ("recovery",)
EXPERIMENT = "veloready-live-monitoring"
EPOCH = dt.date(1970, 1, 1)

metadata = sa.MetaData()
predictions_table = sa.Table(
    "champion_predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("athlete_id", sa.String(128), nullable=False, index=True),
    sa.Column("family", sa.String(32), nullable=False),
    sa.Column("registry_name", sa.String(255), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("feature_date", sa.Date, nullable=False),
    sa.Column("target_date", sa.Date, nullable=False, index=True),
    sa.Column("prediction", sa.Float, nullable=False),
    sa.Column("persistence", sa.Float, nullable=True),
    sa.Column("athlete_mean", sa.Float, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),  # naive UTC
    sa.UniqueConstraint("athlete_id", "family", "model_version", "target_date",
                        name="uq_prediction_day"),
)


def store_url(settings: Settings) -> str:
    """The prediction store's SQLAlchemy URL (default: SQLite under ``data/``)."""
    if settings.paths.prediction_store_url:
        return settings.paths.prediction_store_url
    return f"sqlite:///{settings.resolve(settings.paths.data_dir) / 'predictions.db'}"


class PredictionStore:
    """Each day's champion predictions, one row per athlete, family, version and day."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = sa.create_engine(url)
        metadata.create_all(self.engine)

    def add(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert rows, skipping days already stored; returns how many were new."""
        if not rows:
            return 0
        dialect = self.engine.dialect.name
        keys = ["athlete_id", "family", "model_version", "target_date"]
        stmt: sa.Executable
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(predictions_table).on_conflict_do_nothing(index_elements=keys)
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(predictions_table).on_conflict_do_nothing(index_elements=keys)
        else:  # pragma: no cover - other back ends are not configured anywhere
            raise ValueError(f"prediction store: unsupported database {dialect!r}")
        stamp = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        payload = [r | {"created_at": stamp} for r in rows]
        new = 0
        with self.engine.begin() as conn:
            for start in range(0, len(payload), 500):
                new += conn.execute(stmt, payload[start:start + 500]).rowcount or 0
        return int(new)

    def last_feature_dates(self, family: str) -> dict[tuple[str, str], dt.date]:
        """(athlete, version) -> newest stored feature day."""
        t = predictions_table
        q = (sa.select(t.c.athlete_id, t.c.model_version, sa.func.max(t.c.feature_date))
             .where(t.c.family == family).group_by(t.c.athlete_id, t.c.model_version))
        with self.engine.connect() as conn:
            return {(a, v): d for a, v, d in conn.execute(q)}

    def load(self, family: str, athlete_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Stored predictions of a family (optionally some athletes) as a frame."""
        t = predictions_table
        q = sa.select(t).where(t.c.family == family)
        if athlete_ids is not None:
            q = q.where(t.c.athlete_id.in_(list(athlete_ids)))
        with self.engine.connect() as conn:
            frame = pd.DataFrame(conn.execute(q).mappings().all())
        if frame.empty:
            return pd.DataFrame(columns=[c.name for c in t.columns])
        for col in ("feature_date", "target_date"):
            frame[col] = pd.to_datetime(frame[col])
        return frame

    def dispose(self) -> None:
        """Close pooled connections (SQLite files can then be removed)."""
        self.engine.dispose()


@dataclass
class ChampionModel:
    """What monitoring needs to know about one athlete's champion."""

    athlete_id: str
    family: str
    name: str
    version: str
    run_id: str
    test_mae: float | None
    test_rmse: float | None
    data_start: str
    data_end: str
    test_start: str
    #: The rider's own mean/SD per signal from the training part (run param
    #: ``athlete_baseline``, the same constants the Core ML export carries as
    #: ``veloready.athlete_baseline``); None for models without athlete-relative inputs.
    athlete_baseline: dict[str, dict[str, float | None]] | None = None
    baseline_error: str | None = None


def _parse_baseline(raw: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The run's ``athlete_baseline`` param as a dict, or why it cannot be used."""
    if not raw:
        return None, None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return None, f"run param athlete_baseline is not valid JSON ({exc}; {len(raw)} chars)"
    if not isinstance(value, dict) or not all(
            isinstance(v, dict) and "mean" in v and "sd" in v for v in value.values()):
        return None, "run param athlete_baseline is not {signal: {mean, sd}}"
    return value, None


def champions_for(settings: Settings, athlete_ids: Iterable[str], family: str = "recovery",
                  client: MlflowClient | None = None) -> dict[str, ChampionModel]:
    """The champions of these athletes (athletes without one are left out)."""
    from veloready_pipeline.lifecycle.store import CHAMPION, configure_mlflow, registered_name

    client = client or configure_mlflow(settings)
    out: dict[str, ChampionModel] = {}
    for aid in athlete_ids:
        name = registered_name(settings, family, aid)
        try:
            mv = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            continue
        run_id = mv.run_id or mv.tags.get("run_id", "")
        tags: dict[str, str] = {}
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        if run_id:
            try:
                run = client.get_run(run_id)
                tags, metrics = dict(run.data.tags), dict(run.data.metrics)
                params = dict(run.data.params)
            except MlflowException:
                pass
        test = {k: float(mv.tags[f"metric.{k}"]) if mv.tags.get(f"metric.{k}")
                else metrics.get(k) for k in ("mae", "rmse")}
        baseline, problem = _parse_baseline(params.get("athlete_baseline"))
        out[aid] = ChampionModel(aid, family, name, str(mv.version), run_id,
                                 test["mae"], test["rmse"], tags.get("data_start", ""),
                                 tags.get("data_end", ""), tags.get("test_start", ""),
                                 baseline, problem)
    return out


def predict_recovery_days(athlete_rows: pd.DataFrame, champion: ChampionModel, booster: Any,
                          start: dt.date, end: dt.date,
                          target: str = "recovery_score") -> list[dict[str, Any]]:
    """The champion's prediction for each feature day in [start, end] of one athlete.

    Features use only days up to each feature day (see `veloready_pipeline.features`),
    so predicting a range at once equals predicting one day at a time as data arrives.
    A model with athlete-relative inputs (the pooled recovery model) gets them computed
    with the constants recorded at training (``champion.athlete_baseline``), exactly as
    in training and in the app; raw inputs of a sensor the rider lacks are missing
    (NaN), as they were in training.
    """
    from veloready_pipeline.features import (
        RELATIVE_FEATURES,
        build_recovery_features,
        relative_feature_frame,
    )

    if end < start or athlete_rows.empty:
        return []
    feats = build_recovery_features(athlete_rows, target=target)
    frame = feats.frame
    names = list(booster.feature_names or [])
    if any(n in RELATIVE_FEATURES for n in names):
        if champion.athlete_baseline is None:
            raise ValueError(
                f"athlete {champion.athlete_id}: champion v{champion.version} takes "
                "athlete-relative inputs but "
                + (champion.baseline_error or "its run records no athlete_baseline param")
                + "; cannot compute them as in training")
        baseline = {s: {k: (math.nan if v is None else float(v)) for k, v in b.items()}
                    for s, b in champion.athlete_baseline.items()}
        frame = relative_feature_frame(frame, baseline).join(
            frame[[c for c in frame.columns if c not in RELATIVE_FEATURES
                   and c not in names]])
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ValueError(f"athlete {champion.athlete_id}: champion v{champion.version} needs "
                         f"features {missing} that the current data cannot provide")
    day = frame.index.normalize()
    rows = frame[(day >= pd.Timestamp(start)) & (day <= pd.Timestamp(end))
                 & frame["recovery_today"].notna()]
    if rows.empty:
        return []
    pred = booster.inplace_predict(rows[names].to_numpy(dtype=np.float32))
    mean = _training_mean(feats.labelled(), champion)
    out = []
    for (ts, row), p in zip(rows.iterrows(), np.asarray(pred, dtype=float), strict=True):
        out.append({
            "athlete_id": champion.athlete_id,
            "family": champion.family,
            "registry_name": champion.name,
            "model_version": champion.version,
            "feature_date": ts.date(),
            "target_date": (ts + pd.Timedelta(days=1)).date(),
            "prediction": float(p),
            "persistence": float(row["recovery_today"]),
            "athlete_mean": mean,
        })
    return out


def _training_mean(labelled: pd.DataFrame, champion: ChampionModel) -> float | None:
    """Mean label over the model's train+validation days (the gate's mean baseline)."""
    if not champion.data_start or not champion.test_start:
        return None
    sel = labelled[(labelled.index >= pd.Timestamp(champion.data_start))
                   & (labelled.index < pd.Timestamp(champion.test_start))]["label"]
    return float(sel.mean()) if len(sel) else None


def load_booster(uri: str) -> Any:
    """A registered XGBoost model as a booster (feature names kept)."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mlflow.xgboost.load_model(uri)
    return model.get_booster() if hasattr(model, "get_booster") else model


def store_champion_predictions(frame: pd.DataFrame, settings: Settings, *,
                               end: str | None = None, family: str = "recovery",
                               client: MlflowClient | None = None,
                               store: PredictionStore | None = None) -> dict[str, Any]:
    """Store each champion's predictions for every day not stored yet (up to ``end``).

    A day's prediction is only "live" when the champion never saw its label, so the
    first feature day is the day after the champion's training window; a run that
    missed days catches up (at most ``monitoring.max_catch_up_days``).
    """
    if family not in MONITORED_FAMILIES:
        raise ValueError(f"live monitoring supports {MONITORED_FAMILIES}, not {family!r}")
    from veloready_pipeline.lifecycle.store import configure_mlflow

    client = client or configure_mlflow(settings)
    store = store or PredictionStore(store_url(settings))
    ids = sorted(frame["athlete_id"].astype(str).unique())
    champs = champions_for(settings, ids, family, client)
    last = store.last_feature_dates(family)
    groups = dict(tuple(frame.groupby("athlete_id", sort=False)))
    stop_all = pd.Timestamp(end).date() if end else None
    rows: list[dict[str, Any]] = []
    per_athlete: dict[str, int] = {}
    errors: dict[str, str] = {}
    for aid, champ in champs.items():
        data = groups[aid]
        stop = data["date"].max().date()
        if stop_all is not None:
            stop = min(stop, stop_all)
            data = data[data["date"] <= pd.Timestamp(stop)]
        first = (dt.date.fromisoformat(champ.data_end) + dt.timedelta(days=1)
                 if champ.data_end else stop)
        if (aid, champ.version) in last:
            first = max(first, last[(aid, champ.version)] + dt.timedelta(days=1))
        first = max(first, stop - dt.timedelta(days=settings.monitoring.max_catch_up_days - 1))
        try:
            booster = load_booster(f"models:/{champ.name}/{champ.version}")
            new = predict_recovery_days(data, champ, booster, first, stop,
                                        target=settings.recovery_target)
        except Exception as exc:  # noqa: BLE001 - one athlete's failure is reported
            errors[aid] = f"{type(exc).__name__}: {exc}"
            continue
        rows.extend(new)
        per_athlete[aid] = len(new)
    stored = store.add(rows)
    return {"family": family, "champions": len(champs), "predicted": len(rows),
            "stored": stored, "per_athlete": per_athlete, "errors": errors,
            "store": store.url}


@dataclass
class LiveStatus:
    """One athlete's live verdict on the last evaluated day."""

    athlete_id: str
    family: str
    registry_name: str
    version: str
    as_of: str | None
    n_window: int
    n_total: int
    live_mae: float | None
    live_rmse: float | None
    persistence_mae: float | None
    mean_mae: float | None
    test_mae: float | None
    mae_ratio: float | None
    flagged: bool
    reasons: list[str] = field(default_factory=list)
    first_flagged: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mae(err: np.ndarray) -> float:
    return float(np.mean(np.abs(err))) if len(err) else math.nan


def _rmse(err: np.ndarray) -> float:
    return float(np.sqrt(np.mean(err ** 2))) if len(err) else math.nan


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _upper_margin(x: np.ndarray, z: float) -> float:
    """Mean minus ``z`` standard errors: how far above zero/threshold it clearly is."""
    if len(x) < 2:
        return float(np.mean(x)) if len(x) else math.nan
    return float(np.mean(x) - z * np.std(x, ddof=1) / math.sqrt(len(x)))


def drift_reasons(abs_err: np.ndarray, abs_mean_err: np.ndarray | None,
                  test_mae: float | None, cfg: MonitoringSettings) -> list[str]:
    """The drift rules one window breaks (empty: no drift, or too few outcomes).

    A window of 14 outcomes is a small sample, and so is a test part of a few weeks:
    a rule only breaks when the window's MAE is above its threshold by more than
    ``confidence_z`` standard errors of that MAE (paired differences for the mean
    baseline). ``confidence_z = 0`` gives the plain comparison.

    Args:
        abs_err: the champion's absolute errors in the window.
        abs_mean_err: the athlete-mean baseline's absolute errors on the same days.
        test_mae: the champion's MAE on its test part.
    """
    n = len(abs_err)
    if n < cfg.min_outcomes:
        return []
    mae = float(np.mean(abs_err))
    z = cfg.confidence_z
    reasons = []
    if test_mae is not None and test_mae > 0:
        limit = cfg.mae_ratio * test_mae
        if _upper_margin(abs_err - limit, z) > 0:
            reasons.append(f"mae_ratio: live MAE {mae:.2f} > {cfg.mae_ratio:g} x test MAE "
                           f"{test_mae:.2f}")
    if abs_mean_err is not None and len(abs_mean_err) == n:
        if _upper_margin(abs_err - abs_mean_err, z) > 0:
            reasons.append(f"worse_than_mean: live MAE {mae:.2f} > athlete-mean baseline "
                           f"MAE {float(np.mean(abs_mean_err)):.2f}")
    return reasons


def live_metrics(predictions: pd.DataFrame, outcomes: pd.DataFrame,
                 champions: dict[str, ChampionModel], cfg: MonitoringSettings,
                 as_of: str | None = None,
                 target: str = "recovery_score") -> tuple[pd.DataFrame, list[LiveStatus]]:
    """Daily rolling live metrics and each athlete's current drift status.

    Args:
        predictions: stored predictions (`PredictionStore.load`).
        outcomes: canonical rows (athlete_id, date, ``target``): the truth that arrived.
        champions: the current champion per athlete; only its own predictions count.
        as_of: last day to evaluate (default: the newest outcome).

    Returns:
        (daily, statuses): ``daily`` has one row per athlete and evaluated day with the
        window's n, live MAE/RMSE, baseline MAEs, the ratio and the rules it breaks.
    """
    truth = outcomes[["athlete_id", "date", target]].rename(
        columns={"date": "target_date", target: "actual"})
    truth = truth.assign(athlete_id=truth["athlete_id"].astype(str),
                         target_date=pd.to_datetime(truth["target_date"]))
    last_day = pd.Timestamp(as_of) if as_of else truth["target_date"].max()
    window = pd.Timedelta(days=cfg.window_days)
    daily_rows: list[dict[str, Any]] = []
    statuses: list[LiveStatus] = []
    for aid, champ in sorted(champions.items()):
        mine = predictions[(predictions["athlete_id"] == aid)
                           & (predictions["model_version"] == champ.version)]
        joined = mine.merge(truth, on=["athlete_id", "target_date"], how="inner")
        joined = joined[joined["actual"].notna() & (joined["target_date"] <= last_day)]
        joined = joined.sort_values("target_date")
        status = LiveStatus(aid, champ.family, champ.name, champ.version, None, 0, len(joined),
                            None, None, None, None, champ.test_mae, None, False)
        if joined.empty:
            status.reasons = ["no scored predictions yet"]
            statuses.append(status)
            continue
        days = pd.date_range(joined["target_date"].min(), last_day, freq="D")
        t = joined["target_date"].to_numpy()
        actual = joined["actual"].to_numpy(dtype=float)
        err = joined["prediction"].to_numpy(dtype=float) - actual
        pers = joined["persistence"].to_numpy(dtype=float) - actual
        mean = joined["athlete_mean"].to_numpy(dtype=float) - actual
        streak = 0
        for day in days:
            sel = (t > (day - window).to_datetime64()) & (t <= day.to_datetime64())
            n = int(sel.sum())
            if n == 0:
                continue
            mae = _mae(err[sel])
            p_sel = sel & np.isfinite(pers)
            m_sel = sel & np.isfinite(mean)
            mean_mae = _mae(mean[m_sel]) if m_sel.any() else math.nan
            paired = np.abs(mean[sel]) if m_sel.sum() == n else None
            reasons = drift_reasons(np.abs(err[sel]), paired, champ.test_mae, cfg)
            streak = streak + 1 if reasons else 0
            flagged = streak >= cfg.persist_days
            row = {
                "athlete_id": aid, "family": champ.family, "version": champ.version,
                "day": day.date().isoformat(), "n": n, "live_mae": mae,
                "live_rmse": _rmse(err[sel]),
                "persistence_mae": _mae(pers[p_sel]) if p_sel.any() else math.nan,
                "mean_mae": mean_mae, "test_mae": champ.test_mae,
                "mae_ratio": (mae / champ.test_mae) if champ.test_mae else math.nan,
                "breaks_rule": bool(reasons), "streak": streak, "flagged": flagged,
                "reasons": "; ".join(reasons),
            }
            daily_rows.append(row)
            if flagged and status.first_flagged is None:
                status.first_flagged = row["day"]
        if daily_rows and daily_rows[-1]["athlete_id"] == aid:
            last = daily_rows[-1]
            status.as_of = last["day"]
            status.n_window = last["n"]
            status.live_mae = _finite(last["live_mae"])
            status.live_rmse = _finite(last["live_rmse"])
            status.persistence_mae = _finite(last["persistence_mae"])
            status.mean_mae = _finite(last["mean_mae"])
            status.mae_ratio = _finite(last["mae_ratio"])
            status.flagged = last["flagged"]
            status.reasons = last["reasons"].split("; ") if last["reasons"] else []
            if last["reasons"] and not last["flagged"]:
                status.reasons.append(f"breaking for {last['streak']} of "
                                      f"{cfg.persist_days} days needed")
        statuses.append(status)
    daily = pd.DataFrame(daily_rows)
    return daily, statuses


def monitor_champions(frame: pd.DataFrame, settings: Settings, *, as_of: str | None = None,
                      family: str = "recovery", client: MlflowClient | None = None,
                      store: PredictionStore | None = None
                      ) -> tuple[pd.DataFrame, list[LiveStatus]]:
    """Join the stored predictions of every current champion with the outcomes in ``frame``."""
    from veloready_pipeline.lifecycle.store import configure_mlflow

    client = client or configure_mlflow(settings)
    store = store or PredictionStore(store_url(settings))
    ids = sorted(frame["athlete_id"].astype(str).unique())
    champs = champions_for(settings, ids, family, client)
    preds = store.load(family, list(champs))
    return live_metrics(preds, frame, champs, settings.monitoring, as_of,
                        target=settings.recovery_target)


def _day_step(day: str) -> int:
    return (dt.date.fromisoformat(day) - EPOCH).days


def log_live_metrics(settings: Settings, daily: pd.DataFrame, statuses: Sequence[LiveStatus],
                     client: MlflowClient | None = None) -> dict[str, str]:
    """Log the daily series to MLflow (step = day) and the verdict on each model version.

    One MLflow run per monitored model version (``monitor-<family>-<athlete>-v<N>``, in
    the experiment ``veloready-live-monitoring``) collects the series day after day, so
    its charts show the live MAE against the test MAE over time; days already logged
    are not logged again.

    Returns:
        athlete id -> MLflow run id.
    """
    from veloready_pipeline.lifecycle.store import TRAINING_EXPERIMENT_TAGS, configure_mlflow

    client = client or configure_mlflow(settings)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = (exp.experiment_id if exp is not None else client.create_experiment(
        EXPERIMENT, artifact_location=f"{settings.mlflow_artifact_root()}/{EXPERIMENT}",
        tags=TRAINING_EXPERIMENT_TAGS))
    existing: dict[str | None, Any] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string="tags.monitor_key != ''",
                                  max_results=5000, page_token=token)
        existing |= {r.data.tags.get("monitor_key"): r for r in page}
        token = page.token
        if not token:
            break
    by_athlete = {aid: grp for aid, grp in daily.groupby("athlete_id")} if len(daily) else {}
    runs: dict[str, str] = {}
    stamp = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    for st in statuses:
        key = f"{st.family}:{st.athlete_id}:v{st.version}"
        run = existing.get(key)
        if run is None:
            run = client.create_run(exp_id, run_name=f"monitor-{st.family}-{st.athlete_id}-"
                                    f"v{st.version}",
                                    tags={"monitor_key": key, "athlete_id": st.athlete_id,
                                          "family": st.family, "registry_name": st.registry_name,
                                          "model_version": st.version,
                                          "kind": "live-monitoring"})
        run_id = run.info.run_id
        runs[st.athlete_id] = run_id
        logged = run.data.tags.get("last_logged_day", "")
        grp = by_athlete.get(st.athlete_id)
        metrics: list[Metric] = []
        if grp is not None:
            for row in grp.itertuples(index=False):
                if row.day <= logged:
                    continue
                ts = int(dt.datetime.combine(dt.date.fromisoformat(row.day), dt.time(),
                                             dt.UTC).timestamp() * 1000)
                values = {"live_mae": row.live_mae, "live_rmse": row.live_rmse,
                          "live_n": row.n, "persistence_mae": row.persistence_mae,
                          "mean_baseline_mae": row.mean_mae, "test_mae": row.test_mae,
                          "mae_ratio": row.mae_ratio, "drift_flag": float(row.flagged)}
                metrics += [Metric(k, float(v), ts, _day_step(row.day))
                            for k, v in values.items()
                            if v is not None and math.isfinite(float(v))]
        for start in range(0, len(metrics), 900):
            client.log_batch(run_id, metrics=metrics[start:start + 900])
        if st.as_of:
            client.set_tag(run_id, "last_logged_day", max(st.as_of, logged))
        client.set_tag(run_id, "drift_status", "flagged" if st.flagged else "ok")
        verdict = {"live_mae": st.live_mae, "live_rmse": st.live_rmse,
                   "live_window_end": st.as_of, "drift_flag": str(st.flagged).lower(),
                   "drift_reasons": "; ".join(st.reasons), "monitored_at": stamp}
        for k, v in verdict.items():
            client.set_model_version_tag(st.registry_name, st.version, k,
                                         "" if v is None else (f"{v:.4f}" if isinstance(
                                             v, float) else str(v)))
    return runs


def drift_markdown(statuses: Sequence[LiveStatus], cfg: MonitoringSettings,
                   actions: dict[str, str] | None = None) -> str:
    """The monitoring verdict as Markdown (Prefect artifact)."""
    flagged = [s for s in statuses if s.flagged]
    lines = [
        "# Live monitoring of champions",
        "",
        f"Window {cfg.window_days} days (at least {cfg.min_outcomes} outcomes); drift when "
        f"live MAE > {cfg.mae_ratio:g} x test MAE or worse than the athlete's mean baseline. "
        f"**{len(flagged)} of {len(statuses)} champions flagged.**",
        "",
        "| athlete | family | version | window end | n | live MAE | live RMSE | test MAE "
        "| ratio | persistence MAE | mean MAE | drift | first flagged | action |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}"

    order = sorted(statuses, key=lambda s: (not s.flagged, s.athlete_id))
    for s in order:
        lines.append(
            f"| {s.athlete_id} | {s.family} | v{s.version} | {s.as_of or ''} | {s.n_window} "
            f"| {f(s.live_mae)} | {f(s.live_rmse)} | {f(s.test_mae)} | {f(s.mae_ratio)} "
            f"| {f(s.persistence_mae)} | {f(s.mean_mae)} "
            f"| {'**' + '; '.join(s.reasons) + '**' if s.flagged else 'ok'} "
            f"| {s.first_flagged or ''} | {(actions or {}).get(s.athlete_id, '')} |")
    return "\n".join(lines)


def pending_drift_actions(settings: Settings, statuses: Sequence[LiveStatus],
                          client: MlflowClient | None = None) -> list[LiveStatus]:
    """Flagged champions whose version has not triggered an action yet (act once per version)."""
    from veloready_pipeline.lifecycle.store import configure_mlflow

    client = client or configure_mlflow(settings)
    out = []
    for s in statuses:
        if not s.flagged:
            continue
        tags = client.get_model_version(s.registry_name, s.version).tags
        if not tags.get("drift_action_taken"):
            out.append(s)
    return out


def record_drift_action(settings: Settings, status: LiveStatus, action: str, detail: str,
                        client: MlflowClient | None = None) -> None:
    """Remember on the model version what a drift flag triggered, and when."""
    from veloready_pipeline.lifecycle.store import configure_mlflow

    client = client or configure_mlflow(settings)
    stamp = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    client.set_model_version_tag(status.registry_name, status.version, "drift_action_taken",
                                 action)
    client.set_model_version_tag(status.registry_name, status.version, "drift_action_detail",
                                 f"{stamp}: {detail}"[:4000])
