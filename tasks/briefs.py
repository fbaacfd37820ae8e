"""Prefect tasks of the daily brief flow: thin wrappers over `veloready_pipeline.briefs`.

Each generation task takes a *chunk* of athletes (``briefs.chunk_size``, 250 by
default): 1,000 athletes are four tasks, not a thousand. The API key is read inside
the task that uses it (environment first, then a Prefect Secret block) and never
passed as a parameter, so it never lands in the run's recorded parameters.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from veloready_pipeline.briefs import service
from veloready_pipeline.briefs.inputs import InputsResult
from veloready_pipeline.briefs.service import BriefPlan, Generation, Provider
from veloready_pipeline.briefs.store import BriefRecord, BriefStore
from veloready_pipeline.config import Settings


def read_api_key(settings: Settings) -> str | None:
    """The LLM key: ``$briefs.api_key_env``, else the Prefect Secret ``briefs.api_key_block``."""
    key = service.api_key_from_env(settings.briefs)
    if key or not settings.briefs.api_key_block:
        return key
    from prefect.blocks.system import Secret

    # Called from sync code, Prefect's sync_compatible `load` returns the block itself.
    secret = cast("Secret[Any]", Secret.load(settings.briefs.api_key_block))
    value = secret.get()
    return str(value).strip() or None


def choose_provider(settings: Settings) -> Provider:
    """``rules`` or ``llm`` for this run (see `service.resolve_provider`)."""
    if settings.briefs.provider == "rules":
        return "rules"
    return service.resolve_provider(settings.briefs, read_api_key(settings) is not None)


@task(name="load-brief-data", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def load_brief_data(data: str | None, settings: Settings) -> pd.DataFrame:
    """Canonical daily rows from ``data``, the configured source or the synthetic athletes."""
    return service.load_brief_data(data, settings)


@task(name="load-champion-predictions", cache_policy=NO_CACHE)
def load_champion_predictions(day: dt.date, settings: Settings) -> dict[str, dict[str, float]]:
    """Tomorrow's recovery from each athlete's champion model, where one exists."""
    return service.load_champion_predictions(settings, day)


@task(name="build-brief-inputs", cache_policy=NO_CACHE)
def build_brief_inputs(
    frame: pd.DataFrame,
    day: dt.date,
    athlete_ids: list[str] | None,
    settings: Settings,
    predictions: dict[str, dict[str, float]] | None = None,
) -> InputsResult:
    """Validated inputs per active athlete; bad rows become errors naming athlete + field."""
    return service.build_inputs(frame, day, athlete_ids, settings, predictions)


@task(name="decide-briefs", cache_policy=NO_CACHE)
def decide_briefs(inputs: InputsResult, settings: Settings, provider: Provider) -> list[BriefPlan]:
    """The rules engine's decision and brief for every athlete."""
    return service.plan_briefs(inputs.inputs, settings.briefs, provider)


@task(name="find-stored-briefs", cache_policy=NO_CACHE, task_run_name="find-stored-{chunk_no}")
def find_stored_briefs(
    chunk_no: int, plans: list[BriefPlan], settings: Settings, provider: Provider
) -> tuple[list[BriefRecord], list[BriefPlan]]:
    """Briefs still valid in the store (reused at zero cost) and the ones to write."""
    return service.split_cached(plans, BriefStore(settings.brief_store()), provider)


@task(name="generate-briefs", cache_policy=NO_CACHE, task_run_name="generate-briefs-{chunk_no}")
def generate_briefs(
    chunk_no: int, plans: list[BriefPlan], settings: Settings, budget_usd: float
) -> Generation:
    """LLM briefs for a chunk under the concurrency, rate-limit and budget settings."""
    return service.generate_llm_briefs(
        plans, settings.briefs, read_api_key(settings), settings.seed, budget_usd
    )


@task(name="guard-briefs", cache_policy=NO_CACHE, task_run_name="guard-briefs-{chunk_no}")
def guard_briefs(
    chunk_no: int,
    plans: list[BriefPlan],
    generation: Generation | None,
    settings: Settings,
    provider: Provider,
) -> list[BriefRecord]:
    """Guardrails against the rules decision; rejected or failed briefs fall back."""
    return service.guard_briefs(plans, generation, settings.briefs, provider)


@task(name="store-briefs", cache_policy=NO_CACHE, task_run_name="store-briefs-{chunk_no}",
      retries=2, retry_delay_seconds=2)
def store_briefs(chunk_no: int, records: list[BriefRecord], settings: Settings) -> int:
    """Write the chunk's records (valid for ``briefs.valid_hours``)."""
    return BriefStore(settings.brief_store()).save(records)


@task(name="publish-brief-summary", cache_policy=NO_CACHE)
def publish_brief_summary(summary: dict[str, Any]) -> str:
    """Markdown artifact: counts by source, fallbacks, failures, tokens and cost."""
    artifact_id = create_markdown_artifact(
        key="daily-briefs-summary",
        markdown=service.summary_markdown(summary),
        description=f"Daily briefs for {summary['date']}: {summary['counts']['briefs']} briefs",
    )
    return str(artifact_id)
