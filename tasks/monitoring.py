"""Prefect tasks of the live-monitoring flow: thin wrappers over `veloready_pipeline.monitoring`.

Each task handles every monitored athlete at once (a day's work is small: one
prediction per athlete), so orchestration stays a tiny share of the run.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from veloready_pipeline import monitoring
from veloready_pipeline.config import Settings


@task(name="store-champion-predictions", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5)
def store_predictions(frame: pd.DataFrame, settings: Settings,
                      end: str | None = None) -> dict[str, Any]:
    """Each champion's prediction for every day not stored yet (catching up missed days)."""
    return monitoring.store_champion_predictions(frame, settings, end=end)


@task(name="score-live-metrics", cache_policy=NO_CACHE)
def score_live_metrics(frame: pd.DataFrame, settings: Settings,
                       as_of: str | None = None) -> tuple[pd.DataFrame, list[Any]]:
    """Join stored predictions with the outcomes that arrived; rolling live metrics + drift."""
    return monitoring.monitor_champions(frame, settings, as_of=as_of)


@task(name="log-live-metrics", cache_policy=NO_CACHE)
def log_live_metrics(settings: Settings, daily: pd.DataFrame,
                     statuses: list[Any]) -> dict[str, str]:
    """The daily series to MLflow (step = day) and the verdict onto each model version."""
    return monitoring.log_live_metrics(settings, daily, statuses)


@task(name="drift-actions-pending", cache_policy=NO_CACHE)
def drift_actions_pending(settings: Settings, statuses: list[Any]) -> list[Any]:
    """Flagged champions that have not triggered their action yet (one action per version)."""
    return monitoring.pending_drift_actions(settings, statuses)


@task(name="rollback-drifted", cache_policy=NO_CACHE)
def rollback_drifted(settings: Settings, flagged: list[Any]) -> dict[str, str]:
    """Roll each drifted champion back to its previous version (refusals are reported)."""
    from veloready_pipeline.lifecycle.rollout import RolloutError, rollback_champion

    done: dict[str, str] = {}
    for st in flagged:
        try:
            out = rollback_champion(settings, st.athlete_id, st.family,
                                    reason="drift: " + "; ".join(st.reasons),
                                    actor="live-monitoring")
            done[st.athlete_id] = f"rolled back v{out['from_version']} -> v{out['to_version']}"
        except RolloutError as exc:
            done[st.athlete_id] = f"rollback refused: {exc}"
        monitoring.record_drift_action(settings, st, "rollback", done[st.athlete_id])
    return done


@task(name="record-drift-actions", cache_policy=NO_CACHE)
def record_drift_actions(settings: Settings, flagged: list[Any], action: str,
                         detail: str) -> None:
    """Remember on each flagged version what its flag triggered."""
    for st in flagged:
        monitoring.record_drift_action(settings, st, action, detail)
