"""Deployments of the weekly training flow: the weekly schedule and manual backfills."""

from __future__ import annotations

from typing import Any

from flows.weekly_training import weekly_training, weekly_training_backfill

WEEKLY_CRON = "0 2 * * 1"  # Mondays 02:00 UTC, before the morning briefs


def training_deployments() -> list[Any]:
    """The weekly cron deployment and the parameterised backfill deployment."""
    weekly = weekly_training.to_deployment(
        name="weekly",
        cron=WEEKLY_CRON,
        description="Retrain, gate, register and ship every athlete's models each week.",
        tags=["veloready", "training", "scheduled"],
        parameters={"progress": False},
    )
    backfill = weekly_training_backfill.to_deployment(
        name="backfill",
        description=(
            "Manual backfill: re-train as of each date in [start, end] every N days, "
            "using only data up to each date. Parameters: start, end (required, "
            "YYYY-MM-DD inside the data's dates: a window before the data fails naming "
            "them), every_days, athlete_ids, families, data."
        ),
        tags=["veloready", "training", "backfill"],
        # No default window: dates only make sense against the data at hand, so the
        # run form asks for start and end.
        parameters={"every_days": 7},
    )
    return [weekly, backfill]
