"""Daily live monitoring of champions; its first stages store their daily predictions.

Stages of `daily_monitoring` (each a Prefect task over all athletes):

1. ingest       - the configured source into the canonical table (cut at ``as_of``)
2. validate     - Great Expectations; quarantined athletes are not scored
3. predict      - each champion's prediction for every day not stored yet
4. score        - stored predictions joined with the outcomes that arrived since:
                  rolling live MAE/RMSE vs the test MAE and the naive baselines
5. log          - the daily series to MLflow (step = day), verdicts on model versions
6. drift        - a Markdown artifact of every champion's status, flagged ones first
7. trigger      - ``monitoring.drift_action``: none, retrain (the weekly flow for the
                  flagged athletes) or rollback; once per flagged model version
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.monitoring import (
    drift_actions_pending,
    log_live_metrics,
    record_drift_actions,
    rollback_drifted,
    score_live_metrics,
    store_predictions,
)
from tasks.training import ingest_data, validate_data
from veloready_pipeline import ingest
from veloready_pipeline.config import Settings, load_settings
from veloready_pipeline.monitoring import drift_markdown

if TYPE_CHECKING:
    from veloready_pipeline.validation import ValidationOutcome


def _load_frame(settings: Settings, data: str | None, as_of: str | None,
                athlete_ids: list[str] | None) -> Any:
    ingested = ingest_data(settings, data, None)
    # validate_data is typed `-> Any`, which Prefect's Task overloads read as a coroutine;
    # called synchronously it returns the ValidationOutcome.
    outcome = cast("ValidationOutcome", validate_data(ingested, settings, as_of))
    return ingest.select_athletes(ingest.cut_as_of(outcome.clean, as_of), athlete_ids)


@flow(name="live-monitoring", log_prints=True)
def daily_monitoring(settings: Settings | None = None, data: str | None = None,
                     as_of: str | None = None,
                     athlete_ids: list[str] | None = None) -> dict[str, Any]:
    """Score every champion on the days after it shipped and flag drift.

    Args:
        settings: the whole configuration (``monitoring`` holds window and rules).
        data: a path or URL overriding the configured source.
        as_of: evaluate as of this day (default: the newest data), for backfills.
        athlete_ids: restrict to these athletes.
    """
    logger = get_run_logger()
    settings = settings or load_settings()
    cfg = settings.monitoring
    frame = _load_frame(settings, data, as_of, athlete_ids)
    stored = store_predictions(frame, settings, as_of)
    daily, statuses = score_live_metrics(frame, settings, as_of)
    for st in statuses:  # a champion that could not predict says why, not just "no data"
        err = stored.get("errors", {}).get(st.athlete_id)
        if err:
            logger.warning("athlete %s: champion predictions failed: %s", st.athlete_id, err)
            st.reasons = [f"prediction failed: {err}"] + [
                r for r in st.reasons if r != "no scored predictions yet"]
    runs = log_live_metrics(settings, daily, statuses)
    flagged = [s for s in statuses if s.flagged]
    actions: dict[str, str] = {}
    todo = drift_actions_pending(settings, statuses) if cfg.drift_action != "none" else []
    if todo and cfg.drift_action == "rollback":
        actions = rollback_drifted(settings, todo)
    elif todo and cfg.drift_action == "retrain":
        actions = _retrain(settings, todo, data, as_of)
    for st in flagged:
        actions.setdefault(st.athlete_id, "flagged (action already taken for this version)"
                           if cfg.drift_action != "none" else "flagged")
    create_markdown_artifact(
        key="live-monitoring", markdown=drift_markdown(statuses, cfg, actions),
        description=f"{len(flagged)} of {len(statuses)} champions drifting")
    logger.info("monitored %d champions, %d new predictions, %d flagged: %s", len(statuses),
                stored["stored"], len(flagged), ", ".join(s.athlete_id for s in flagged))
    return {
        "as_of": as_of,
        "monitored": len(statuses),
        "predictions": stored,
        "flagged": [s.athlete_id for s in flagged],
        "statuses": [s.as_dict() for s in statuses],
        "actions": actions,
        "mlflow_runs": runs,
    }


def _retrain(settings: Settings, todo: list[Any], data: str | None,
             as_of: str | None) -> dict[str, str]:
    """Retrain the flagged athletes: the configured deployment, or the weekly flow inline."""
    ids = sorted({s.athlete_id for s in todo})
    families = sorted({s.family for s in todo})
    dep = settings.monitoring.retrain_deployment
    if dep:
        from prefect.client.schemas.objects import FlowRun
        from prefect.deployments import run_deployment

        # Called from sync code, the sync_compatible run_deployment returns the FlowRun.
        run = cast(FlowRun, run_deployment(
            dep, parameters={"athlete_ids": ids, "families": families}, timeout=0))
        detail = f"retrain: deployment {dep} run {run.id} scheduled"
    else:
        from flows.weekly_training import weekly_training

        summary = weekly_training(settings=settings, data=data, as_of=as_of, athlete_ids=ids,
                                  families=families, progress=False)
        detail = f"retrain: weekly-training {summary['flow_run_id']} -> {summary['counts']}"
    record_drift_actions(settings, todo, "retrain", detail)
    return dict.fromkeys(ids, detail)


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    daily_monitoring()
