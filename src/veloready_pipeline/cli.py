"""`veloready` command line: simulate, train, briefs, OTA checks and the main job.

Commands import the flows lazily, so `veloready --help` stays fast and nothing
(Prefect, MLflow) is touched until a command runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from veloready_pipeline.registry_cli import monitor_command, ota_promote, registry_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="VeloReady Pipeline: per-athlete models, gated, registered, shipped.")
ota_app = typer.Typer(no_args_is_help=True, help="OTA manifests for the app.")
app.add_typer(ota_app, name="ota")
app.add_typer(registry_app, name="registry")
ota_app.command("promote")(ota_promote)
app.command("monitor")(monitor_command)


def _settings(config: Path | None, **overrides: object):  # noqa: ANN202
    from pydantic import ValidationError

    from veloready_pipeline.config import load_settings

    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        typer.secho(f"invalid configuration:\n{exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _quiet_env() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # MLflow 3 sends usage telemetry from a background thread unless told not to; the
    # pipeline runs on machines without internet (and the others' analytics are off).
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # The pipeline's INFO logs reach the console and the Prefect UI; Prefect's
    # internals and third-party libraries stay at WARNING (see veloready_pipeline.logs).
    from veloready_pipeline.logs import prefect_logging_env

    prefect_logging_env()
    # The local (ephemeral) API server can take well over the default 20 s to start on
    # a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def simulate(
    athletes: int = typer.Option(20, "--athletes", min=1),
    days: int = typer.Option(180, "--days", min=14),
    seed: int = typer.Option(7, "--seed", min=0),
    profile: str = typer.Option("realistic", "--profile", help="realistic | easy"),
    out: Path = typer.Option(Path("data/synthetic"), "--out"),
) -> None:
    """Simulate synthetic athletes into a canonical Parquet file."""
    from veloready_pipeline.simulate import simulate_athletes, write_simulation

    if profile not in ("realistic", "easy"):
        raise typer.BadParameter("profile must be realistic or easy", param_hint="--profile")
    result = simulate_athletes(n_athletes=athletes, days=days, seed=seed, profile=profile)  # type: ignore[arg-type]
    path = write_simulation(result, out)
    typer.echo(f"wrote {len(result.frame)} rows for {athletes} athletes to {path}")
    typer.echo(f"noise floor: {json.dumps(result.noise_floor)}")


@app.command()
def train(
    data: str | None = typer.Option(None, "--data", help="file, folder or URL"),
    source: str | None = typer.Option(None, "--source",
                                         help="canonical|generic_csv|intervals|pmdata|postgres"),
    families: str | None = typer.Option(None, "--families", help="comma separated"),
    as_of: str | None = typer.Option(None, "--as-of", help="YYYY-MM-DD"),
    athletes: str | None = typer.Option(None, "--athletes", help="comma separated ids"),
    summary_json: Path | None = typer.Option(None, "--summary-json"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
    mapping: Path | None = typer.Option(None, "--mapping", help="generic CSV mapping YAML"),
) -> None:
    """Run the weekly training flow once (locally, or against PREFECT_API_URL)."""
    _quiet_env()
    settings = _settings(config)
    if mapping is not None:
        settings.source.mapping = mapping
    from flows.weekly_training import weekly_training

    fams = _csv(families)
    summary = weekly_training(settings=settings, data=data, source=source, as_of=as_of,
                              athlete_ids=_csv(athletes), families=fams,  # type: ignore[arg-type]
                              summary_json=str(summary_json) if summary_json else None)
    typer.echo(json.dumps(summary["counts"], indent=2))
    typer.echo(f"summary:        {summary['summary_path']}")
    typer.echo(f"MLflow store:   {summary['mlflow_tracking_uri']}")
    typer.echo(f"OTA manifests:  {summary['ota_dir']}")
    if summary["quarantined"]:
        typer.echo(f"quarantined:    {len(summary['quarantined'])} athletes, reports in "
                   f"{summary['quarantine_dir']}")


@app.command()
def main(
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """The main job on the embedded default: synthetic athletes, training, briefs."""
    _quiet_env()
    settings = _settings(config)
    from flows.daily_briefs import daily_briefs
    from flows.weekly_training import weekly_training

    summary = weekly_training(settings=settings)
    briefs = daily_briefs(settings=settings)
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
    typer.echo(f"MLflow UI:        .venv/bin/mlflow ui --backend-store-uri {uri} "
               "--port 5000  -> http://127.0.0.1:5000")
    typer.echo("Prefect UI:       PREFECT_HOME=.prefect .venv/bin/prefect server start "
               "-> http://127.0.0.1:4200")


@ota_app.command("verify")
def ota_verify(
    path: Path = typer.Argument(..., help="an OTA root, an athlete folder or a manifest"),
    public_key: Path | None = typer.Option(
        None, "--public-key",
        help="trusted Ed25519 public key (PEM); default: the configured signing key's "
             "public half (paths.signing_key -> <stem>.pub.pem) when it exists"),
    integrity_only: bool = typer.Option(
        False, "--integrity-only",
        help="without a trusted key, check against the key embedded in each signature "
             "file: proves nothing about who signed; exits 3 even when every check passes"),
    state: Path | None = typer.Option(
        None, "--state",
        help="last accepted sequence per athlete (JSON); default <root>.accepted.json "
             "next to the OTA root, e.g. data/ota.accepted.json"),
    record: bool = typer.Option(True, "--record/--no-record",
                                help="write the sequences that passed to --state"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """Check manifests as the app does; exit 1 on any problem, 2 without a trusted key.

    Per athlete: signature with the trusted key, athlete id = folder, sequence not below
    the last accepted (--state) or issued one, not expired, every file's size and
    hashes, no unlisted file; for a root also athletes whose manifest is gone.
    """
    import datetime as dt

    from veloready_pipeline.export.ota import (
        MANIFEST_NAME,
        OTAStateError,
        OTAVerificationError,
        accepted_state_path,
        load_public_key,
        public_key_path,
        verify_tree,
    )

    def refuse(message: str) -> typer.Exit:
        typer.secho(f"ota verify: {message}", fg="red", err=True)
        return typer.Exit(2)

    if public_key is None:
        settings = _settings(config)
        candidate = public_key_path(settings.resolve(settings.paths.signing_key))
        if candidate.exists():
            public_key = candidate
            if integrity_only:
                typer.echo(f"--integrity-only ignored: the configured key {candidate} is "
                           "trusted, so identity is checked too")
                integrity_only = False
        elif not integrity_only:
            raise refuse(
                f"no trusted public key: --public-key not given and {candidate} (the "
                "configured signing key's public half) does not exist, so who signed the "
                "manifests cannot be proven. Pass --public-key PEM, or --integrity-only to "
                "check file hashes against the embedded keys (exit 3, never 0).")
    elif integrity_only:
        raise refuse("--integrity-only and --public-key exclude each other")
    trusted = None
    if public_key is not None:
        try:
            trusted = load_public_key(public_key)
        except (OSError, ValueError) as exc:
            raise refuse(f"--public-key {public_key}: not an Ed25519 PEM key ({exc})") from exc
    if not path.exists():
        raise refuse(f"{path}: no such file or folder")
    root = (path.parent.parent if path.is_file()
            else path.parent if (path / MANIFEST_NAME).is_file() else path)
    state = state or accepted_state_path(root)
    if integrity_only:
        typer.secho("WARNING: --integrity-only: signatures are checked against the key "
                    "embedded in each signature file, which anyone can make; WHO signed is "
                    "NOT proven, and nothing is recorded in the state file.",
                    fg="yellow", err=True)
    try:
        tree = verify_tree(path, trusted, state_path=state, record=record)
    except OTAStateError as exc:
        raise refuse(str(exc)) from exc
    except OTAVerificationError as exc:
        typer.secho(f"OTA verification FAILED: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    now = dt.datetime.now(dt.UTC)
    for rep in tree.reports:
        left = (dt.datetime.fromisoformat(rep.expires_at.replace("Z", "+00:00")) - now)
        files = ", ".join(f"{f['file']} ({f['size_bytes']} B)" for f in rep.files)
        typer.echo(f"ok  {rep.manifest}: athlete {rep.athlete_id}, sequence {rep.sequence}, "
                   f"expires {rep.expires_at} (in {left.total_seconds() / 86400:.1f} days); "
                   f"{files}")
    for problem in tree.problems:
        typer.secho(f"OTA verification FAILED: {problem}", fg="red", err=True)
    key_note = (f"trusted key {public_key}" if trusted is not None
                else "embedded keys (INTEGRITY ONLY: identity not proven)")
    typer.echo(f"{len(tree.reports)} manifest(s) verified with {key_note}; "
               f"{len(tree.problems)} problem(s); state {state}"
               + (f" (recorded: {', '.join(tree.recorded)})" if tree.recorded else ""))
    if tree.problems:
        raise typer.Exit(1)
    if trusted is None:
        typer.secho("integrity only: exit 3 (not 0) because identity is not proven",
                    fg="yellow", err=True)
        raise typer.Exit(3)


@app.command()
def report(
    summary_json: Path = typer.Option(..., "--summary-json", exists=True, dir_okay=False),
    out: Path = typer.Option(Path("data/reports/latest"), "--out"),
) -> None:
    """Write the evaluation report (Markdown + HTML + plots) for a run summary."""
    from veloready_pipeline.report import build_report

    paths = build_report(json.loads(summary_json.read_text()), out)
    for kind, path in paths.items():
        typer.echo(f"{kind:9s} {path}")


@app.command()
def schema() -> None:
    """Print the canonical daily schema as Markdown."""
    from veloready_pipeline.schema import schema_markdown

    typer.echo(schema_markdown())


def _register_optional_commands() -> None:
    """Commands owned by other modules; registered when their module is present."""
    try:
        from veloready_pipeline.briefs.cli import briefs_command
    except ImportError as exc:  # the briefs package is part of the project
        print(f"warning: briefs command unavailable: {exc}", file=sys.stderr)
    else:
        app.command("briefs")(briefs_command)


_register_optional_commands()
