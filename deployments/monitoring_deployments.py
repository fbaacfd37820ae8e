"""Deployment of the live-monitoring flow: every morning, after the night's data lands."""

from __future__ import annotations

from typing import Any

from flows.monitoring import daily_monitoring

DAILY_CRON = "30 5 * * *"  # 05:30 UTC, after wearables sync and before the morning briefs


def monitoring_deployments() -> list[Any]:
    """The daily monitoring deployment (stores predictions, scores them, flags drift)."""
    daily = daily_monitoring.to_deployment(
        name="daily",
        cron=DAILY_CRON,
        description=(
            "Store each champion's prediction for tomorrow, score the predictions whose "
            "outcomes arrived, log live MAE/RMSE to MLflow and flag drift. Parameters: "
            "data, as_of (backfill), athlete_ids."
        ),
        tags=["veloready", "monitoring", "scheduled"],
    )
    return [daily]
