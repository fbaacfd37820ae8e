"""The daily brief flow: every active athlete's coaching brief, written ahead of time.

Stages (tasks over chunks of ``briefs.chunk_size`` athletes, never one per athlete):

1. inputs    - canonical rows (+ champion recovery predictions where they exist) ->
               validated brief inputs per athlete (bad input is an error naming
               athlete and field; stale athletes are listed as inactive)
2. decide    - the rules engine's decision and rules brief for everyone
3. generate  - stored briefs still valid are reused (zero LLM calls); the rest come
               from the LLM under concurrency / rate / budget limits, or the rules
               engine when no key or endpoint is configured
4. guard     - every LLM reply (a structured brief) judged against the decision,
               fields and text; refusals fall back to the rules brief, recorded
               (``fallback_reason`` ``guardrail:...``, ``counts.refused``)
5. store     - records keyed ``athlete:date:prompt_version[:suffix]``, valid 24 h
6. publish   - a Markdown artifact with counts by source, fallbacks, tokens and cost

Chunks run one after another so the run's rate limit and budget hold across them;
inside a chunk the requests run concurrently. Large task inputs are wrapped in
``quote`` so Prefect does not walk thousands of records looking for futures.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any, TypeVar, cast

from prefect import flow, get_run_logger
from prefect.utilities.annotations import quote as _prefect_quote

from tasks.briefs import (
    build_brief_inputs,
    choose_provider,
    decide_briefs,
    find_stored_briefs,
    generate_briefs,
    guard_briefs,
    load_brief_data,
    load_champion_predictions,
    publish_brief_summary,
    store_briefs,
)
from veloready_pipeline.briefs import service
from veloready_pipeline.briefs.store import BriefRecord, BriefStore
from veloready_pipeline.config import Settings, load_settings

MAX_BACKFILL_DAYS = 366
_T = TypeVar("_T")


def quote(value: _T) -> _T:
    """Prefect's `quote`, typed as what the task receives: the value itself.

    Prefect unwraps the marker before calling the task (it only stops Prefect walking
    the value for futures), so the task's parameter type is the value's type.
    """
    return cast(_T, _prefect_quote(value))


@flow(name="daily-briefs")
def daily_briefs(
    date: str | None = None,
    athlete_ids: list[str] | None = None,
    data: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Write (or reuse) today's brief for every active athlete.

    Args:
        date: the brief date, YYYY-MM-DD (UTC); default today in UTC; ``latest`` for the
            newest day in the data (replaying a data set that ends in the past).
        athlete_ids: only these athletes (default: everyone active on that date).
        data: a canonical Parquet/CSV path overriding the configured source.
        settings: the whole configuration (default: YAML file + VELOREADY_* env).

    Returns:
        The run summary (counts by source, fallbacks, failures, tokens, cost, store
        location and one row per athlete).
    """
    logger = get_run_logger()
    started = time.monotonic()
    settings = settings or load_settings()
    if date != "latest":
        service.parse_brief_date(date)  # a bad date fails before any work
    provider = choose_provider(settings)
    b = settings.briefs

    # 1. inputs
    frame = load_brief_data(data, settings)
    day = service.parse_brief_date(date, frame)
    predictions = load_champion_predictions(day, settings)
    inputs = build_brief_inputs(quote(frame), day, athlete_ids, settings, quote(predictions))
    # 2. decide
    plans = decide_briefs(quote(inputs), settings, provider)
    # 3-5. generate, guard and store, chunk by chunk
    records: list[BriefRecord] = []
    requests = 0
    remaining = b.budget_usd
    for no, chunk in enumerate(service.chunk_plans(plans, b.chunk_size)):
        cached, todo = find_stored_briefs(no, quote(chunk), settings, provider)
        generation = None
        if provider == "llm" and todo:
            generation = generate_briefs(no, quote(todo), settings, remaining)
            requests += generation.requests
            remaining = max(0.0, remaining - generation.cost_usd)
        fresh = guard_briefs(no, quote(todo), quote(generation), settings, provider)
        store_briefs(no, quote(fresh), settings)
        records.extend(cached + fresh)
    # 6. publish
    summary = service.summarise_briefs(
        day, records, inputs, provider=provider, settings=settings,
        store_location=BriefStore(settings.brief_store()).location(), requests=requests,
        elapsed_s=time.monotonic() - started, requested=athlete_ids,
    )
    publish_brief_summary(quote(summary))
    logger.info(
        "briefs for %s: %s (provider %s, %d requests, $%.4f)",
        day, summary["counts"], provider, requests, summary["cost_usd"],
    )
    return summary


@flow(name="daily-briefs-backfill")
def daily_briefs_backfill(
    start: str,
    end: str,
    athlete_ids: list[str] | None = None,
    data: str | None = None,
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """Write the briefs for every date from ``start`` to ``end`` (inclusive).

    One ``daily-briefs`` subflow per date; ``briefs.budget_usd`` is the budget of the
    whole backfill, not of each day.
    """
    settings = settings or load_settings()
    first, last = service.parse_brief_date(start), service.parse_brief_date(end)
    if last < first:
        raise ValueError(f"backfill end {end} is before start {start}")
    if (last - first).days + 1 > MAX_BACKFILL_DAYS:
        raise ValueError(f"backfill of {(last - first).days + 1} days; at most {MAX_BACKFILL_DAYS}")
    remaining = settings.briefs.budget_usd
    out = []
    day = first
    while day <= last:
        day_settings = settings.model_copy(
            update={"briefs": settings.briefs.model_copy(update={"budget_usd": remaining})}
        )
        summary = daily_briefs(
            date=day.isoformat(), athlete_ids=athlete_ids, data=data, settings=day_settings
        )
        remaining = max(0.0, remaining - summary["cost_usd"])
        out.append({
            "date": summary["date"],
            "counts": summary["counts"],
            "fallback_reasons": summary["fallback_reasons"],
            "requests": summary["requests"],
            "cost_usd": summary["cost_usd"],
        })
        day += dt.timedelta(days=1)
    return out


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    daily_briefs()
