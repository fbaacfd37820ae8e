"""`veloready simulate | train | backfill | main | report | schema`.

``train``, ``backfill`` and ``main`` check everything they can (settings, folders, data,
families, dates: `veloready_pipeline.cli.checks`) before the flow is loaded by
entrypoint (`veloready_pipeline.cli.project`); the flows import Prefect, MLflow and torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from veloready_pipeline.cli import common
from veloready_pipeline.cli.checks import (
    check_date,
    check_families,
    check_home,
    check_source,
    write_not_started,
)
from veloready_pipeline.cli.errors import UserError, one_line
from veloready_pipeline.cli.project import load_flow, project_root

WEEKLY = "flows/weekly_training.py:weekly_training"
BACKFILL = "flows/weekly_training.py:weekly_training_backfill"
BRIEFS = "flows/daily_briefs.py:daily_briefs"


def simulate(
    athletes: int = typer.Option(20, "--athletes", min=1),
    days: int = typer.Option(180, "--days", min=14),
    seed: int = typer.Option(7, "--seed", min=0),
    profile: str = typer.Option("realistic", "--profile", help="realistic | easy | mixed"),
    out: Path = typer.Option(Path("data/synthetic"), "--out"),
    start_date: str = typer.Option(
        "auto", "--start-date",
        help="first simulated day YYYY-MM-DD, or 'auto': the history ends today (UTC), so "
             "'train' does not refuse its rows as dated in the future"),
) -> None:
    """Simulate synthetic athletes into a canonical Parquet file."""
    from veloready_pipeline.simulate import simulate_athletes, write_simulation

    if profile not in ("realistic", "easy", "mixed"):
        raise typer.BadParameter("profile must be realistic, easy or mixed",
                                 param_hint="--profile")
    if start_date.strip() == "auto":
        import datetime as dt

        today = dt.datetime.now(dt.UTC).date()
        first_day = (today - dt.timedelta(days=days - 1)).isoformat()
    else:
        first_day = check_date(start_date, "--start-date") or start_date
    result = simulate_athletes(n_athletes=athletes, days=days, seed=seed, profile=profile,  # type: ignore[arg-type]
                               start_date=first_day)
    path = write_simulation(result, out)
    typer.echo(f"wrote {len(result.frame)} rows for {athletes} athletes to {path}")
    typer.echo(f"noise floor: {json.dumps(result.noise_floor)}")


def _check_train(config: Path | None, data: str | None, source: str | None,
                 mapping: Path | None, families: str | None, as_of: str | None,
                 since: str | None, summary_json: Path | None) -> tuple[Any, ...]:
    """Settings (with ``--mapping``), families and dates of ``train``, all checked.

    A mistake writes the not-started summary JSON and raises `UserError`.
    """
    settings = None
    try:
        settings = common.load(config, source={"mapping": mapping} if mapping else None)
        check_home(settings)
        fams = check_families(families)
        as_of = check_date(as_of, "--as-of")
        since = check_date(since, "--since")
        check_source(settings, data, source, mapping)
        if as_of or since:  # a window outside the data: one line before any flow starts
            from veloready_pipeline.ingest import check_training_window, load_data
            from veloready_pipeline.sources.common import NoDataError

            try:
                check_training_window(load_data(settings, data, source).frame, as_of, since)
            except NoDataError as exc:
                raise UserError(str(exc)) from exc
        project_root()
    except UserError as exc:
        write_not_started(summary_json, settings, str(exc), "train")
        raise
    return settings, fams, as_of, since


def train(
    data: str | None = typer.Option(None, "--data", help="file, folder or URL"),
    source: str | None = typer.Option(None, "--source",
                                         help="canonical|generic_csv|intervals|pmdata|postgres"),
    families: str | None = typer.Option(None, "--families", help="comma separated"),
    as_of: str | None = typer.Option(None, "--as-of", help="YYYY-MM-DD"),
    since: str | None = typer.Option(
        None, "--since", help="YYYY-MM-DD: train on rows from this day (window also capped "
        "at max_history_days)"),
    athletes: str | None = typer.Option(None, "--athletes", help="comma separated ids"),
    summary_json: Path | None = typer.Option(None, "--summary-json"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
    mapping: Path | None = typer.Option(None, "--mapping", help="generic CSV mapping YAML"),
) -> None:
    """Run the weekly training flow once (locally, or against PREFECT_API_URL)."""
    common.quiet_env()
    settings, fams, as_of, since = _check_train(config, data, source, mapping, families,
                                                as_of, since, summary_json)
    summary = load_flow(WEEKLY)(
        settings=settings, data=data, source=source, as_of=as_of,
        athlete_ids=common.csv(athletes), families=fams,
        summary_json=str(summary_json) if summary_json else None, since=since)
    typer.echo(json.dumps(summary["counts"], indent=2))
    typer.echo(f"summary:        {summary['summary_path']}")
    typer.echo(f"MLflow store:   {summary['mlflow_tracking_uri']}")
    typer.echo(f"OTA manifests:  {summary['ota_dir']}")
    if summary["quarantined"]:
        typer.echo(f"quarantined:    {len(summary['quarantined'])} athletes, reports in "
                   f"{summary['quarantine_dir']}")
    from veloready_pipeline.ingest import data_notes_line

    typer.echo(f"data notes:     {data_notes_line(summary.get('data_note_counts', {}))} "
               f"(per athlete in the summary's data_notes)")


def backfill(
    start: str = typer.Option(..., "--start", help="first as-of date, YYYY-MM-DD"),
    end: str = typer.Option(..., "--end", help="last as-of date, YYYY-MM-DD"),
    every_days: int = typer.Option(7, "--every-days", min=1),
    data: str | None = typer.Option(None, "--data", help="file, folder or URL"),
    families: str | None = typer.Option(None, "--families", help="comma separated"),
    athletes: str | None = typer.Option(None, "--athletes", help="comma separated ids"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """Re-train as of each date from --start to --end every N days (the backfill flow).

    A window before the data fails naming the data's dates (exit 2)."""
    common.quiet_env()
    settings = common.load(config)
    check_home(settings)
    fams = check_families(families)
    start = check_date(start, "--start") or start
    end = check_date(end, "--end") or end
    from veloready_pipeline.ingest import backfill_dates, data_window, load_data

    # a window outside the data is a user mistake: say so before any flow starts
    backfill_dates(start, end, every_days, data_window(load_data(settings, data).frame))
    runs = load_flow(BACKFILL)(start=start, end=end, every_days=every_days,
                               settings=settings, data=data,
                               athlete_ids=common.csv(athletes), families=fams)
    from veloready_pipeline.summary import counts_text

    for run in runs:
        typer.echo(f"as of {run['as_of']}: {counts_text(run['counts'])}")
        typer.echo(f"    summary: {run['summary_path']}")
    typer.echo(f"{len(runs)} as-of run(s); gate tables and reports: Prefect artifacts "
               "'gate-table' / 'evaluation-report' of each weekly-training run")


def main_job(
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """The main job on the embedded default: synthetic athletes, training, briefs."""
    common.quiet_env()
    settings = None
    try:
        settings = common.load(config)
        check_home(settings)
        check_source(settings, None, None, None)
        project_root()
    except UserError as exc:
        write_not_started(None, settings, str(exc), "main")
        raise
    weekly_training = load_flow(WEEKLY)
    daily_briefs = load_flow(BRIEFS)
    summary = weekly_training(settings=settings)
    briefs = daily_briefs(settings=settings)
    _print_main(settings, summary, briefs)


def _print_main(settings: Any, summary: dict[str, Any], briefs: dict[str, Any]) -> None:
    from veloready_pipeline.summary import counts_text

    uri = summary["mlflow_tracking_uri"]
    typer.echo("")
    typer.echo("== VeloReady main job finished ==")
    typer.echo(f"models by family/status: {json.dumps(summary['counts'])}")
    typer.echo(f"run summary:      {summary['summary_path']}")
    typer.echo(f"MLflow store:     {uri}")
    typer.echo(f"exported models:  {settings.resolve(settings.paths.data_dir) / 'exports'}")
    typer.echo(f"OTA manifests:    {summary['ota_dir']}")
    typer.echo(f"daily briefs:     {briefs.get('store', settings.brief_store())} "
               f"({briefs.get('counts', briefs.get('total', ''))})")
    ui = settings.ui
    typer.echo(f"evaluation report: {summary.get('report', {}).get('html', '')} "
               f"({counts_text(summary['counts'])})")
    typer.echo(f"MLflow UI:        MLFLOW_DISABLE_TELEMETRY=true .venv/bin/mlflow ui "
               f"--backend-store-uri {uri} --port {ui.mlflow_port}  -> "
               f"{ui.mlflow_url.rstrip('/')}/#/experiments?workflowType=machine_learning")
    typer.echo("Prefect UI:       PREFECT_HOME=.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false "
               f"PREFECT_SERVER_API_PORT={ui.prefect_port} .venv/bin/prefect server start  -> "
               f"http://127.0.0.1:{ui.prefect_port}")


def report(
    summary_json: Path = typer.Option(..., "--summary-json", help="a run summary JSON"),
    out: Path | None = typer.Option(
        None, "--out", help="default: <paths.reports_dir>/latest under VELOREADY_HOME"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """Write the evaluation report (Markdown + HTML + plots) for a run summary."""
    if not summary_json.is_file():
        raise UserError(f"--summary-json {summary_json}: no such file")
    try:
        summary = json.loads(summary_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--summary-json {summary_json} is not JSON ({one_line(exc)})") \
            from exc
    if not isinstance(summary, dict) or "rows" not in summary:
        why = (f"the run did not start: {summary.get('reason')}"
               if isinstance(summary, dict) and summary.get("status") == "not_started"
               else "no 'rows'")
        raise UserError(f"--summary-json {summary_json} is not a run summary ({why})")
    if out is None:
        settings = common.load(config)
        out = settings.resolve(settings.paths.reports_dir) / "latest"
    from veloready_pipeline.report import build_report

    paths = build_report(summary, out)
    for kind, path in paths.items():
        typer.echo(f"{kind:9s} {path}")


def schema() -> None:
    """Print the canonical daily schema as Markdown."""
    from veloready_pipeline.schema import schema_markdown

    typer.echo(schema_markdown())
