"""`veloready monitor`: the live-monitoring flow once (loaded by entrypoint)."""

from __future__ import annotations

from pathlib import Path

import typer

from veloready_pipeline.cli import common
from veloready_pipeline.cli.project import load_flow

MONITORING = "flows/monitoring.py:daily_monitoring"


def monitor(
    data: str | None = typer.Option(None, "--data", help="file, folder or URL"),
    as_of: str | None = typer.Option(None, "--as-of", help="evaluate up to this day"),
    athletes: str | None = typer.Option(None, "--athletes", help="comma separated ids"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """Store today's champion predictions, score live metrics, flag drift (one run)."""
    import datetime as dt

    common.quiet_warnings()
    settings = common.load(config)
    if as_of is not None:
        try:
            as_of = dt.date.fromisoformat(as_of).isoformat()
        except ValueError as exc:
            raise typer.BadParameter(f"{as_of!r} is not a calendar date YYYY-MM-DD ({exc})",
                                     param_hint="--as-of") from exc
    if data is not None and "://" not in data and not Path(data).exists():
        raise typer.BadParameter(f"{data}: no such file or folder", param_hint="--data")
    out = load_flow(MONITORING)(settings=settings, data=data, as_of=as_of,
                                athlete_ids=common.csv(athletes) or None)
    typer.echo(f"predictions stored: {out['predictions']['stored']} "
               f"({out['predictions']['champions']} champions)")
    typer.echo(f"flagged: {', '.join(out['flagged']) or 'none'} of {out['monitored']} monitored")
    for aid, err in sorted(out["predictions"].get("errors", {}).items()):
        typer.echo(f"  {aid}: prediction failed, not monitored: {err}", err=True)
    for aid, action in out.get("actions", {}).items():
        typer.echo(f"  {aid}: {action}")
