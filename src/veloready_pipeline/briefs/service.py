"""The brief stages as plain Python: load, decide, look up, generate, guard, summarise.

The Prefect tasks in ``tasks/briefs.py`` wrap these one to one, and
`run_daily_briefs` chains them without any orchestrator (used by tests and the
throughput bench). Nothing here imports Prefect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import pandas as pd

from veloready_pipeline.briefs.guardrails import check_brief, check_reply
from veloready_pipeline.briefs.inputs import BriefInputs, InputsResult, compute_brief_inputs
from veloready_pipeline.briefs.llm import (
    BriefRequest,
    BudgetTracker,
    ChatBriefWriter,
    LLMResult,
    model_price,
)
from veloready_pipeline.briefs.prompt import build_messages, estimate_tokens, load_prompt
from veloready_pipeline.briefs.rules import RULES_VERSION, Decision, decide_brief, write_rules_brief
from veloready_pipeline.briefs.store import BriefRecord, BriefStore, make_brief_key, utc_now
from veloready_pipeline.config import BriefSettings, Settings

Provider = Literal["rules", "llm"]
T = TypeVar("T")

# Fallbacks that say nothing about the brief itself: a re-run within the validity
# window tries the LLM again instead of serving the stored rules brief.
TRANSIENT_REASONS = ("budget", "rate_limited", "server_error", "timeout", "connection", "batch_")
REFUSED = "guardrail"  # the fallback bucket of briefs the guardrails refused
MAX_REASON_CHARS = 200  # the store's fallback_reason column


def parse_brief_date(value: str | dt.date | None, frame: pd.DataFrame | None = None) -> dt.date:
    """The brief date: ``None`` or ``"today"`` is today in UTC; ``"latest"`` is the newest
    day in ``frame`` (explicit, for replaying a data set that ends in the past).

    Raises:
        ValueError: for anything that is not an ISO date (YYYY-MM-DD), or ``latest``
            without data.
    """
    if value is None or value == "today":
        return dt.datetime.now(dt.UTC).date()
    if isinstance(value, dt.date):
        return value
    if str(value).strip() == "latest":
        if frame is None or frame.empty or "date" not in frame:
            raise ValueError("brief date 'latest' needs data with a 'date' column")
        return pd.Timestamp(pd.to_datetime(frame["date"]).max()).date()
    try:
        return dt.date.fromisoformat(str(value).strip())
    except ValueError as exc:
        raise ValueError(
            f"brief date must be YYYY-MM-DD, 'today' or 'latest', got {value!r}"
        ) from exc


def api_key_from_env(settings: BriefSettings) -> str | None:
    """The key from ``briefs.api_key_env`` (Prefect Secret blocks are read in tasks/)."""
    value = os.environ.get(settings.api_key_env, "").strip()
    return value or None


def resolve_provider(settings: BriefSettings, has_key: bool) -> Provider:
    """Which engine writes the briefs.

    ``auto`` means the LLM when a key or an OpenAI-compatible endpoint is configured,
    else the rules engine (the offline default).

    Raises:
        ValueError: ``llm`` was forced but neither a key nor a base URL is configured.
    """
    if settings.provider == "rules":
        return "rules"
    configured = has_key or bool(settings.base_url)
    if settings.provider == "llm" and not configured:
        raise ValueError(
            f"briefs.provider is 'llm' but neither ${settings.api_key_env}, "
            "briefs.api_key_block nor briefs.base_url is set"
        )
    return "llm" if configured else "rules"


def key_suffix(settings: BriefSettings, provider: Provider) -> str | None:
    """Rules-only briefs get their own key, so configuring an LLM later regenerates."""
    parts = (["rules"] if provider == "rules" else []) + (
        [settings.key_suffix] if settings.key_suffix else []
    )
    return "-".join(parts) or None


@dataclass(frozen=True)
class BriefPlan:
    """One athlete's inputs, the rules decision, the rules brief and the store key."""

    inputs: BriefInputs
    decision: Decision
    rules_text: str
    key: str


@dataclass
class Generation:
    """What the LLM stage produced for a chunk."""

    results: dict[str, LLMResult] = field(default_factory=dict)
    requests: int = 0
    cost_usd: float = 0.0
    mode: str = "none"  # none | chat | batch
    batch_id: str | None = None


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def load_brief_data(data: str | None, settings: Settings) -> pd.DataFrame:
    """Canonical rows: ``data``, else the configured source, else the synthetic athletes."""
    import veloready_pipeline.sources as sources

    if hasattr(sources, "make_source"):  # the source factory + the training flow's loader
        from veloready_pipeline.ingest import load_data

        return load_data(settings, data).frame
    from veloready_pipeline.sources.canonical import CanonicalFileSource

    if data is None:
        data_path = settings.resolve(settings.paths.data_dir) / "synthetic" / "athletes.parquet"
        if not data_path.exists():
            from veloready_pipeline.simulate import simulate_athletes, write_simulation

            sim = settings.simulator
            result = simulate_athletes(
                n_athletes=sim.athletes, days=sim.days, seed=settings.seed, profile=sim.profile
            )
            data_path = write_simulation(result, data_path.parent)
        data = str(data_path)
    return CanonicalFileSource(data).load().frame


PREDICTIONS_TABLE = "champion_predictions"  # written by veloready_pipeline.monitoring


def prediction_store_url(settings: Settings) -> str:
    """Where the monitoring flow stores champion predictions (same default as there)."""
    if settings.paths.prediction_store_url:
        return settings.paths.prediction_store_url
    return f"sqlite:///{settings.resolve(settings.paths.data_dir) / 'predictions.db'}"


def load_champion_predictions(settings: Settings, day: dt.date) -> dict[str, dict[str, float]]:
    """Each athlete's newest champion recovery prediction for after ``day``.

    Best effort and read-only: athletes without a champion (or a store that does not
    exist yet) simply have no prediction; the brief does not depend on one.
    """
    import sqlalchemy as sa

    url = prediction_store_url(settings)
    if url.startswith("sqlite:///") and not os.path.exists(url[len("sqlite:///") :]):
        return {}
    engine = sa.create_engine(url)
    try:
        if not sa.inspect(engine).has_table(PREDICTIONS_TABLE):
            return {}
        table = sa.Table(PREDICTIONS_TABLE, sa.MetaData(), autoload_with=engine)
        query = (
            sa.select(table.c.athlete_id, table.c.prediction)
            .where(table.c.family == "recovery", table.c.feature_date <= day,
                   table.c.target_date > day)
            .order_by(table.c.feature_date, *([table.c.id] if "id" in table.c else []))
        )
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    # later rows win: the newest feature day per athlete
    return {
        str(a): {"predicted_recovery": float(min(100.0, max(0.0, p)))}
        for a, p in rows
        if p is not None
    }


def build_inputs(
    frame: pd.DataFrame,
    day: dt.date,
    athlete_ids: Sequence[str] | None,
    settings: Settings,
    predictions: dict[str, dict[str, float]] | None = None,
) -> InputsResult:
    """Validated inputs for every active athlete (stage 1)."""
    return compute_brief_inputs(
        frame,
        day,
        athlete_ids,
        max_age_days=settings.briefs.max_input_age_days,
        predictions=predictions,
    )


def plan_briefs(
    inputs: Iterable[BriefInputs], settings: BriefSettings, provider: Provider
) -> list[BriefPlan]:
    """Rules decision and rules brief for every athlete (stage 2).

    Raises:
        ValueError: the configured prompt version does not exist (checked here, before
            any request, when the LLM will be used).
    """
    if provider == "llm":
        load_prompt(settings.prompt_version, settings.prompt_dir)
    suffix = key_suffix(settings, provider)
    plans = []
    for inp in inputs:
        decision = decide_brief(inp)
        plans.append(
            BriefPlan(
                inputs=inp,
                decision=decision,
                rules_text=write_rules_brief(inp, decision),
                key=make_brief_key(inp.athlete_id, inp.date, settings.prompt_version, suffix),
            )
        )
    return plans


def chunk_plans(plans: Sequence[BriefPlan], size: int) -> list[list[BriefPlan]]:
    """Athletes in chunks: one task per chunk, never one per athlete."""
    return [list(plans[i : i + size]) for i in range(0, len(plans), size)]


def is_transient(record: BriefRecord) -> bool:
    reason = record.fallback_reason or ""
    return record.provider == "llm" and reason.startswith(TRANSIENT_REASONS)


def split_cached(
    plans: Sequence[BriefPlan],
    store: BriefStore,
    provider: Provider,
    now: dt.datetime | None = None,
) -> tuple[list[BriefRecord], list[BriefPlan]]:
    """Valid stored records to reuse, and the plans that still need a brief.

    With the LLM provider, records that fell back for a transient reason (budget, 429,
    5xx, timeout) are tried again; everything else valid is reused at zero cost. A
    stored LLM brief is judged again by today's guardrails before it is reused (a
    stricter release must not serve what it would refuse); one it refuses is rewritten.
    """
    found = store.valid([p.key for p in plans], now)
    cached: list[BriefRecord] = []
    todo: list[BriefPlan] = []
    for plan in plans:
        record = found.get(plan.key)
        if (record is not None and not (provider == "llm" and is_transient(record))
                and (record.source != "llm" or check_brief(record.text, plan.decision).ok)):
            cached.append(record)
        else:
            todo.append(plan)
    return cached, todo


def build_requests(plans: Sequence[BriefPlan], settings: BriefSettings) -> list[BriefRequest]:
    """Chat requests for plans (system prompt + few-shot + the athlete's turn)."""
    template = load_prompt(settings.prompt_version, settings.prompt_dir)
    out = []
    for p in plans:
        messages = build_messages(template, p.inputs, p.decision)
        out.append(BriefRequest(p.key, messages, estimate_tokens(messages)))
    return out


def generate_llm_briefs(
    plans: Sequence[BriefPlan],
    settings: BriefSettings,
    api_key: str | None,
    seed: int,
    budget_usd: float,
) -> Generation:
    """Ask the LLM for every plan under the concurrency, rate and budget limits (stage 3).

    Args:
        budget_usd: what is left of the run's budget for this chunk.
    """
    gen = Generation(mode="batch" if settings.use_batch_api else "chat")
    if not plans:
        return gen
    requests = build_requests(plans, settings)
    budget = BudgetTracker(budget_usd)
    writer: Any
    if settings.use_batch_api:
        from veloready_pipeline.briefs.batch import BatchBriefWriter

        writer = BatchBriefWriter(settings, api_key, budget)
    else:
        writer = ChatBriefWriter(settings, api_key, seed, budget)
    results = run_sync(writer.write_all(requests))
    gen.results = {r.key: r for r in results}
    gen.requests = writer.requests_sent
    gen.cost_usd = budget.spent_usd
    gen.batch_id = getattr(writer, "batch_id", None)
    return gen


def _record(
    plan: BriefPlan,
    settings: BriefSettings,
    provider: Provider,
    now: dt.datetime,
    prompt_hash: str | None,
    *,
    source: Provider,
    text: str,
    reason: str | None = None,
    result: LLMResult | None = None,
    violations: list[str] | None = None,
) -> BriefRecord:
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return BriefRecord(
        key=plan.key,
        athlete_id=plan.inputs.athlete_id,
        brief_date=plan.inputs.date,
        prompt_version=settings.prompt_version,
        suffix=key_suffix(settings, provider),
        source=source,
        provider=provider,
        fallback_reason=reason,
        model=(result.model if result else None) if provider == "llm" else None,
        decision_kind=plan.decision.kind,
        text=text,
        inputs=plan.inputs.model_dump(mode="json"),
        decision=plan.decision.model_dump(mode="json"),
        violations=violations or [],
        prompt_tokens=result.prompt_tokens if result else 0,
        completion_tokens=result.completion_tokens if result else 0,
        cost_usd=round(result.cost_usd, 8) if result else 0.0,
        attempts=result.attempts if result else 0,
        prompt_hash=prompt_hash if provider == "llm" else None,
        rules_version=RULES_VERSION,
        created_at=now,
        expires_at=now + dt.timedelta(hours=settings.valid_hours),
    )


def guard_briefs(
    plans: Sequence[BriefPlan],
    generation: Generation | None,
    settings: BriefSettings,
    provider: Provider,
    now: dt.datetime | None = None,
) -> list[BriefRecord]:
    """Check every LLM brief against its decision; fall back to the rules brief (stage 4).

    The LLM's reply is a structured brief (JSON); `check_reply` judges its fields and
    its text against the decision. The record's ``source`` says where the text came
    from; ``fallback_reason`` says why an LLM brief was not used (``guardrail:...`` for a
    refusal, with every violation also in ``violations``; ``budget``, ``rate_limited``,
    ...). Only the brief's text is stored, never the raw reply.
    """
    now = now or utc_now()
    prompt_hash = None
    if provider == "llm":
        prompt_hash = load_prompt(settings.prompt_version, settings.prompt_dir).hash
    records = []
    for plan in plans:
        result = generation.results.get(plan.key) if generation else None
        if provider == "rules":
            records.append(_record(plan, settings, provider, now, None, source="rules",
                                   text=plan.rules_text))
            continue
        if result is None:
            records.append(_record(plan, settings, provider, now, prompt_hash, source="rules",
                                   text=plan.rules_text, reason="not_generated"))
            continue
        if result.error or result.text is None:
            records.append(_record(plan, settings, provider, now, prompt_hash, source="rules",
                                   text=plan.rules_text, reason=result.error or "empty",
                                   result=result))
            continue
        verdict = check_reply(result.text, plan.decision)
        if verdict.ok and verdict.brief is not None:
            records.append(_record(plan, settings, provider, now, prompt_hash, source="llm",
                                   text=verdict.brief.text, result=result))
        else:
            records.append(_record(
                plan, settings, provider, now, prompt_hash, source="rules", text=plan.rules_text,
                reason=verdict.reason, result=result, violations=verdict.violations,
            ))
    return records


def fallback_bucket(reason: str | None) -> str | None:
    """Group reasons for counting (``guardrail:tss_over_cap:90>30`` -> ``guardrail``)."""
    if reason is None:
        return None
    return reason.split(":", 1)[0]


def summarise_briefs(
    day: dt.date,
    records: Sequence[BriefRecord],
    inputs: InputsResult,
    *,
    provider: Provider,
    settings: Settings,
    store_location: str,
    requests: int,
    elapsed_s: float,
    requested: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The run summary: counts by source, fallbacks, failures, tokens, cost, per athlete."""
    by_source = Counter(r.source for r in records)
    fresh = [r for r in records if not r.cached]
    fallbacks = Counter(fallback_bucket(r.fallback_reason) for r in records if r.fallback_reason)
    price = model_price(settings.briefs)
    rows = [
        {
            "athlete_id": r.athlete_id,
            "key": r.key,
            "decision": r.decision_kind,
            "rule": r.decision.get("rule"),
            "tss_aim": r.decision.get("tss_aim"),
            "tss_cap": r.decision.get("tss_high"),
            "source": r.source,
            "fallback_reason": r.fallback_reason,
            "cached": r.cached,
            "text": r.text,
        }
        for r in sorted(records, key=lambda r: r.athlete_id)
    ]
    counts = {
        "briefs": len(records),
        "rules": by_source.get("rules", 0),
        "llm": by_source.get("llm", 0),
        "cached": len(records) - len(fresh),
        "written": len(fresh),
        "fallbacks": sum(fallbacks.values()),
        "refused": fallbacks.get(REFUSED, 0),
        "input_errors": len(inputs.errors),
        "inactive": len(inputs.inactive),
    }
    return {
        "date": day.isoformat(),
        "provider": provider,
        "model": settings.briefs.model if provider == "llm" else None,
        "mode": ("batch" if settings.briefs.use_batch_api else "chat")
        if provider == "llm" else "rules",
        "prompt_version": settings.briefs.prompt_version,
        "store": store_location,
        "counts": counts,
        "by_source": dict(by_source),
        "by_decision": dict(Counter(r.decision_kind for r in records)),
        "fallback_reasons": dict(fallbacks),
        "failures": [e.as_dict() for e in inputs.errors],
        "inactive": dict(inputs.inactive),
        "requested_athletes": list(requested) if requested else None,
        "requests": requests,
        "tokens": {
            "prompt": sum(r.prompt_tokens for r in fresh),
            "completion": sum(r.completion_tokens for r in fresh),
        },
        "cost_usd": round(sum(r.cost_usd for r in fresh), 6),
        "budget_usd": settings.briefs.budget_usd,
        "price_known": price.known,
        "elapsed_s": round(elapsed_s, 2),
        "briefs": rows,
    }


def summary_markdown(summary: dict[str, Any], max_rows: int = 50) -> str:
    """The Prefect artifact: counts by source, fallbacks, failures, tokens and cost."""
    c = summary["counts"]
    lines = [
        f"# Daily briefs {summary['date']}",
        "",
        f"provider **{summary['provider']}** ({summary['mode']}), prompt "
        f"`{summary['prompt_version']}`, store `{summary['store']}`",
        "",
        "| briefs | from LLM | from rules | cached | fallbacks | refused by guardrails "
        "| input errors | inactive |",
        "|---|---|---|---|---|---|---|---|",
        f"| {c['briefs']} | {c['llm']} | {c['rules']} | {c['cached']} | {c['fallbacks']} "
        f"| {c['refused']} | {c['input_errors']} | {c['inactive']} |",
        "",
        f"requests **{summary['requests']}**, tokens {summary['tokens']['prompt']} in / "
        f"{summary['tokens']['completion']} out, cost **${summary['cost_usd']:.4f}** "
        f"of ${summary['budget_usd']:.2f} budget"
        + ("" if summary["price_known"] else " (price assumed: unknown model)"),
        "",
    ]
    if summary["fallback_reasons"]:
        lines += ["## Fallbacks to the rules brief", "", "| reason | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(summary["fallback_reasons"].items())]
        lines.append("")
    if summary["failures"]:
        lines += ["## Input errors (no brief)", ""]
        lines += [
            f"- `{f['athlete_id']}` field `{f['field']}`: {f['message']}"
            for f in summary["failures"][:max_rows]
        ]
        lines.append("")
    if summary["inactive"]:
        lines += [f"## Inactive athletes ({len(summary['inactive'])})", ""]
        lines += [f"- `{a}`: {why}" for a, why in list(summary["inactive"].items())[:max_rows]]
        lines.append("")
    lines += ["## Briefs", "", "| athlete | decision | TSS | source | fallback |",
              "|---|---|---|---|---|"]
    for row in summary["briefs"][:max_rows]:
        lines.append(
            f"| {row['athlete_id']} | {row['decision']} | {row['tss_aim']} | {row['source']}"
            f"{' (cached)' if row['cached'] else ''} | {row['fallback_reason'] or ''} |"
        )
    if len(summary["briefs"]) > max_rows:
        lines.append(f"\n... and {len(summary['briefs']) - max_rows} more in the store.")
    return "\n".join(lines)


def run_daily_briefs(
    frame: pd.DataFrame,
    day: dt.date,
    settings: Settings,
    *,
    athlete_ids: Sequence[str] | None = None,
    api_key: str | None = None,
    predictions: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Every stage without an orchestrator; returns the same summary as the flow."""
    started = time.monotonic()
    b = settings.briefs
    provider = resolve_provider(b, api_key is not None)
    store = BriefStore(settings.brief_store())
    if predictions is None:
        predictions = load_champion_predictions(settings, day)
    inputs = build_inputs(frame, day, athlete_ids, settings, predictions)
    plans = plan_briefs(inputs.inputs, b, provider)
    records: list[BriefRecord] = []
    requests = 0
    remaining = b.budget_usd
    for chunk in chunk_plans(plans, b.chunk_size):
        cached, todo = split_cached(chunk, store, provider)
        generation = None
        if provider == "llm" and todo:
            generation = generate_llm_briefs(todo, b, api_key, settings.seed, remaining)
            requests += generation.requests
            remaining = max(0.0, remaining - generation.cost_usd)
        fresh = guard_briefs(todo, generation, b, provider)
        store.save(fresh)
        records.extend(cached + fresh)
    return summarise_briefs(
        day, records, inputs, provider=provider, settings=settings,
        store_location=store.location(), requests=requests,
        elapsed_s=time.monotonic() - started, requested=athlete_ids,
    )
