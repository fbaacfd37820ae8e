"""Deployments of the daily brief flow: the morning schedule and manual backfills."""

from __future__ import annotations

from typing import Any

from prefect.schedules import Cron

from flows.daily_briefs import daily_briefs, daily_briefs_backfill

DAILY_CRON = "0 4 * * *"  # 04:00 UTC every day, before European riders wake up


def brief_deployments() -> list[Any]:
    """The daily cron deployment and the parameterised backfill deployment."""
    daily = daily_briefs.to_deployment(
        name="daily",
        schedules=[Cron(DAILY_CRON, timezone="UTC")],
        description="Precompute today's brief (UTC date) for every active athlete.",
        tags=["veloready", "briefs", "scheduled"],
    )
    backfill = daily_briefs_backfill.to_deployment(
        name="backfill",
        description=(
            "Manual backfill: briefs for every date in [start, end] (inclusive). "
            "Parameters: start, end (required, YYYY-MM-DD inside the data's dates), "
            "athlete_ids, data."
        ),
        tags=["veloready", "briefs", "backfill"],
    )
    return [daily, backfill]
