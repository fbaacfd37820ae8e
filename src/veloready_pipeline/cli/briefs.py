"""`veloready briefs`: run the daily brief flow once and say where the briefs are.

Prefect and the flow (loaded by entrypoint) are imported only when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional  # noqa: UP035 - typer reads Optional[...] annotations

import typer

from veloready_pipeline.cli import common
from veloready_pipeline.cli.project import load_flow

MAX_PRINTED_ROWS = 40
BRIEFS = "flows/daily_briefs.py:daily_briefs"


def _print_summary(summary: dict[str, Any]) -> None:
    c = summary["counts"]
    typer.echo(
        f"briefs for {summary['date']}: {c['briefs']} ({c['llm']} llm, {c['rules']} rules, "
        f"{c['cached']} reused from the store), {c['fallbacks']} fallbacks "
        f"({c.get('refused', 0)} refused by the guardrails), "
        f"{c['input_errors']} input errors, {c['inactive']} inactive"
    )
    typer.echo(f"provider {summary['provider']} ({summary['mode']}), prompt "
               f"{summary['prompt_version']}, {summary['requests']} LLM requests, "
               f"${summary['cost_usd']:.4f}")
    rows = summary["briefs"]
    if rows:
        typer.echo(f"{'athlete':<16} {'decision':<10} {'TSS':>4}  {'source':<6} fallback")
        for row in rows[:MAX_PRINTED_ROWS]:
            typer.echo(
                f"{row['athlete_id']:<16} {row['decision']:<10} {row['tss_aim']:>4}  "
                f"{row['source']:<6} {row['fallback_reason'] or ''}"
            )
        if len(rows) > MAX_PRINTED_ROWS:
            typer.echo(f"... {len(rows) - MAX_PRINTED_ROWS} more (see --summary-json)")
    for failure in summary["failures"][:MAX_PRINTED_ROWS]:
        typer.secho(f"input error: {failure['athlete_id']} field {failure['field']}: "
                    f"{failure['message']}", fg="yellow", err=True)
    if summary["inactive"] and not rows:
        first = next(iter(summary["inactive"].items()))
        typer.secho(
            f"no active athletes on {summary['date']} ({len(summary['inactive'])} inactive, "
            f"e.g. {first[0]}: {first[1]}); pass --date YYYY-MM-DD or --date latest",
            fg="yellow", err=True,
        )


def briefs_command(
    data: Optional[str] = typer.Option(None, "--data", help="canonical Parquet/CSV file"),  # noqa: UP045
    date: Optional[str] = typer.Option(  # noqa: UP045
        None, "--date", help="YYYY-MM-DD (default today, UTC) or 'latest' (newest day in data)"
    ),
    summary_json: Optional[Path] = typer.Option(None, "--summary-json"),  # noqa: UP045
    config: Optional[Path] = typer.Option(None, "--config", help="YAML settings file"),  # noqa: UP045
    athletes: Optional[str] = typer.Option(None, "--athletes", help="comma separated"),  # noqa: UP045
) -> None:
    """Precompute the daily briefs (LLM when configured, else the rules engine)."""
    common.quiet_warnings()
    from pydantic import ValidationError

    from veloready_pipeline.briefs.service import parse_brief_date
    from veloready_pipeline.config import load_settings

    try:
        settings = load_settings(config)
    except ValidationError as exc:
        typer.secho(f"invalid configuration:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    try:
        day = date if date == "latest" else parse_brief_date(date).isoformat()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--date") from exc
    ids = common.csv(athletes)

    summary = load_flow(BRIEFS)(date=day, athlete_ids=ids, data=data, settings=settings)
    _print_summary(summary)
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        typer.echo(f"summary:  {summary_json}")
    typer.echo(f"briefs stored in: {summary['store']}")
