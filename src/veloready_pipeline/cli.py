"""`veloready` command line: simulate, train, briefs, OTA checks and the main job.

Commands import the flows lazily, so `veloready --help` stays fast and nothing
(Prefect, MLflow) is touched until a command runs.

Fail fast and short: settings, ``VELOREADY_HOME`` and the configured folders, the data
path and its source (mapping file, mapped columns), families and dates are checked
before Prefect, MLflow or torch are imported. A user mistake ends in one line on
stderr naming the setting, option or file, exit code 2, and (for ``train`` and
``main``) a summary JSON saying the run did not start and why. ``--debug`` anywhere on
the command line adds the traceback. Child processes (Prefect's ephemeral API server)
end with the command, however it ends (`veloready_pipeline.childguard`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import typer

from veloready_pipeline.registry_cli import monitor_command, ota_promote, registry_app


class UserError(Exception):
    """A user mistake (setting, option, file, date): one line naming it, exit code 2."""


# Exceptions that are user mistakes wherever they are raised (by name, so that checking
# them imports nothing heavy): one line and exit code 2.
USER_ERROR_NAMES = frozenset({"UserError", "ConfigError", "SourceDetectionError",
                              "NoDataError"})
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# Commands whose flows may start child processes (Prefect's ephemeral server, Dask).
CHILD_COMMANDS = frozenset({"train", "backfill", "main", "monitor", "briefs", "registry"})
_GUARD: list[subprocess.Popen[bytes]] = []


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, USER_OS_ERRORS) or any(
        t.__name__ in USER_ERROR_NAMES for t in type(exc).__mro__)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _strip_debug(argv: list[str]) -> tuple[list[str], bool]:
    cut = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:cut] if a != "--debug"]
    return head + argv[cut:], len(head) != cut


def start_child_guard() -> None:
    """Start the watchdog that ends this process's children if it is killed."""
    if _GUARD or not Path("/proc/self/stat").exists():
        return
    from veloready_pipeline import childguard

    try:
        _GUARD.append(subprocess.Popen(
            [sys.executable, "-I", "-S", childguard.__file__, str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True))
    except OSError:  # no watchdog is no reason to refuse the run
        pass


def _fail(message: str, code: int, exc: BaseException | None, debug: bool) -> NoReturn:
    if debug and exc is not None:
        traceback.print_exception(exc)
    typer.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


class VeloreadyApp(typer.Typer):
    """The ``veloready`` entry point: every error ends in one line; ``--debug`` adds the
    traceback. User mistakes exit 2, failed checks (OTA, review) keep their codes."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raw = kwargs.pop("args", None)
        argv = list(raw if raw is not None else (args[0] if args else sys.argv[1:]))
        argv, debug = _strip_debug(argv)
        command = next((a for a in argv if not a.startswith("-")), None)
        if command in CHILD_COMMANDS:
            start_child_guard()
        try:
            rv = typer.main.get_command(self).main(
                args=argv, prog_name=kwargs.pop("prog_name", "veloready"),
                standalone_mode=False)
        except SystemExit:
            raise
        except typer.Abort as exc:
            _fail("aborted", 1, exc, debug)
        except Exception as exc:  # noqa: BLE001 - the one place errors become one line
            if type(exc).__name__ == "NoArgsIsHelpError":
                sys.exit(int(getattr(exc, "exit_code", 2)))  # the help is already shown
            if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
                # a usage error found by the option parser (unknown option, bad value)
                ctx = getattr(exc, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                _fail(" ".join(exc.format_message().split()) + hint, int(exc.exit_code), exc,
                      debug)
            if _is_user_error(exc):
                _fail(_one_line(exc), 2, exc, debug)
            _fail(f"{type(exc).__name__}: {_one_line(exc)}"
                  + ("" if debug else " (run again with --debug for the traceback)"), 1, exc,
                  debug)
        sys.exit(rv if isinstance(rv, int) else 0)


app = VeloreadyApp(add_completion=False, no_args_is_help=True,
                   help="VeloReady Pipeline: per-athlete models, gated, registered, shipped. "
                   "Add --debug anywhere for tracebacks.")
ota_app = typer.Typer(no_args_is_help=True, help="OTA manifests for the app.")
app.add_typer(ota_app, name="ota")
app.add_typer(registry_app, name="registry")
ota_app.command("promote")(ota_promote)
app.command("monitor")(monitor_command)


def _settings(config: Path | None, **overrides: object):  # noqa: ANN202
    from veloready_pipeline.config import ConfigError, load_settings

    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


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


# --------------------------------------------------------------------------- checks
# Everything below runs before Prefect, MLflow or torch are imported (pydantic, YAML and
# pandas only): a mistake costs about a second, not the start-up of a flow.


def check_home(settings: Any) -> None:
    """VELOREADY_HOME and every configured folder must be (or can become) folders."""
    from veloready_pipeline.config import repo_root

    raw = os.environ.get("VELOREADY_HOME")
    if raw:
        _check_folder(repo_root(), f"VELOREADY_HOME={raw}")
    names = ["data_dir", "ota_dir", "reports_dir", "quarantine_dir"]
    if not (settings.tracking_uri and settings.artifact_root):
        names.append("mlflow_dir")
    for name in names:
        path = settings.resolve(getattr(settings.paths, name))
        _check_folder(path, f"paths.{name} ({path})")
    key = settings.resolve(settings.paths.signing_key)
    if key.is_dir():
        raise UserError(f"paths.signing_key ({key}) is a folder, not a key file")
    _check_folder(key.parent, f"the folder of paths.signing_key ({key})")


def _check_folder(path: Path, label: str) -> None:
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{label} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{label} is not writable")
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{label}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{label} cannot be created: {parent} is not writable")
            return


def check_families(families: str | None) -> list[str] | None:
    """The ``--families`` list, every name a registered family (`families.FAMILIES`)."""
    from veloready_pipeline.families import FAMILIES

    if families is None:
        return None
    fams = _csv(families) or []
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown or not fams:
        raise UserError(f"--families {families!r}: "
                        + (f"unknown family {', '.join(map(repr, unknown))}" if unknown
                           else "no family named")
                        + f"; choose from {', '.join(FAMILIES.names())}")
    return list(dict.fromkeys(fams))


def check_date(value: str | None, option: str) -> str | None:
    """A calendar date YYYY-MM-DD (returned in that form)."""
    import datetime as dt

    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError as exc:
        raise UserError(f"{option} {value!r} is not a calendar date YYYY-MM-DD "
                        f"({exc})") from exc


def check_source(settings: Any, data: str | None, source: str | None,
                 mapping: Path | None) -> None:
    """The data path exists, its source can be told and built, a mapping fits its files.

    Sets ``settings.source.mapping`` from ``--mapping``.
    """
    import typing

    from veloready_pipeline.config import SourceSettings

    names = typing.get_args(SourceSettings.model_fields["name"].annotation)
    if source is not None and source not in names:
        raise UserError(f"--source {source!r} is not a source; choose from "
                        f"{', '.join(names)}")
    map_label = "--mapping" if mapping is not None else "source.mapping"
    if mapping is not None:
        settings.source.mapping = mapping
    cfg = settings.source
    # The same composition as `pipeline.load_data`: --data/--source over the settings.
    if data is not None or source is not None:
        cfg = SourceSettings(**(cfg.model_dump() | {
            "path": data if data is not None else cfg.path,
            "name": source or ("auto" if data is not None else cfg.name),
        }))
    if cfg.mapping is not None and not Path(cfg.mapping).is_file():
        raise UserError(f"{map_label} {cfg.mapping}: "
                        + ("is a folder, not a mapping file" if Path(cfg.mapping).is_dir()
                           else "no such file"))
    if cfg.path is None and cfg.mapping is None:
        return  # synthetic athletes (written on first use)
    label = "--data" if data is not None else "source.path"
    text = str(cfg.path or "")
    if text and "://" not in text and not any(ch in text for ch in "*?["):
        if not Path(text).exists():
            raise UserError(f"{label} {text}: no such file or folder")
    import yaml

    from veloready_pipeline.config import yaml_error_text
    from veloready_pipeline.sources import GenericCsvSource, make_source

    try:
        built = make_source(cfg)
        if isinstance(built, GenericCsvSource):
            check_mapped_columns(built)
    except yaml.YAMLError as exc:
        raise UserError(yaml_error_text(exc, f"mapping file {cfg.mapping}")) from exc
    except (ValueError, OSError) as exc:
        raise UserError(_one_line(exc).replace("Value error, ", "")) from exc


def check_mapped_columns(source: Any) -> None:
    """Every column a mapping names is in the header of at least one of its files."""
    from veloready_pipeline.sources.common import read_csv_table

    files = source.files()
    m = source.mapping
    headers = {f: set(read_csv_table(f, encoding=m.encoding, delimiter=m.delimiter).header)
               for f in files}
    seen = set().union(*headers.values())
    wanted = [("date.column", m.date.column)]
    if m.athlete.column:
        wanted.append(("athlete.column", m.athlete.column))
    wanted += [(f"fields.{name}", spec.column) for name, spec in m.fields.items()]
    absent = [f"{key} {col!r}" for key, col in wanted if col not in seen]
    if absent:
        first = files[0]
        shown = sorted(headers[first])
        raise UserError(
            f"mapping file {source.mapping_path or '(inline)'}: {', '.join(absent)} "
            f"in the header of none of {len(files)} file(s) (header of {first.name}: "
            f"{', '.join(shown[:12])}{', ...' if len(shown) > 12 else ''})")


def write_not_started(summary_json: Path | None, settings: Any, message: str,
                      command: str) -> Path | None:
    """A summary JSON saying the run did not start and why (best effort).

    Written to ``--summary-json`` when given, else under ``paths.reports_dir`` as
    ``summary-not-started-<UTC time>.json`` when the settings could be read.
    """
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    if summary_json is not None:
        path = summary_json
    elif settings is not None:
        path = (settings.resolve(settings.paths.reports_dir)
                / f"summary-not-started-{now:%Y%m%dT%H%M%SZ}.json")
    else:
        return None
    body = {"status": "not_started", "started": False, "reason": message,
            "command": command, "argv": sys.argv[1:], "checked_at": now.isoformat()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        return None  # e.g. VELOREADY_HOME is a file: the one-line error says so
    return path


@app.command()
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
        first_day = check_date(start_date, "--start-date")
    result = simulate_athletes(n_athletes=athletes, days=days, seed=seed, profile=profile,  # type: ignore[arg-type]
                               start_date=first_day)
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
    since: str | None = typer.Option(
        None, "--since", help="YYYY-MM-DD: train on rows from this day (window also capped "
        "at max_history_days)"),
    athletes: str | None = typer.Option(None, "--athletes", help="comma separated ids"),
    summary_json: Path | None = typer.Option(None, "--summary-json"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
    mapping: Path | None = typer.Option(None, "--mapping", help="generic CSV mapping YAML"),
) -> None:
    """Run the weekly training flow once (locally, or against PREFECT_API_URL)."""
    _quiet_env()
    settings = None
    try:
        settings = _settings(config)
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
    except UserError as exc:
        write_not_started(summary_json, settings, str(exc), "train")
        raise
    from flows.weekly_training import weekly_training

    summary = weekly_training(settings=settings, data=data, source=source, as_of=as_of,
                              athlete_ids=_csv(athletes), families=fams,  # type: ignore[arg-type]
                              summary_json=str(summary_json) if summary_json else None,
                              since=since)
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


@app.command()
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
    _quiet_env()
    settings = _settings(config)
    check_home(settings)
    fams = check_families(families)
    start = check_date(start, "--start") or start
    end = check_date(end, "--end") or end
    from veloready_pipeline.ingest import backfill_dates, data_window, load_data

    # a window outside the data is a user mistake: say so before any flow starts
    backfill_dates(start, end, every_days, data_window(load_data(settings, data).frame))
    from flows.weekly_training import weekly_training_backfill

    runs = weekly_training_backfill(start=start, end=end, every_days=every_days,
                                    settings=settings, data=data,
                                    athlete_ids=_csv(athletes), families=fams)  # type: ignore[arg-type]
    from veloready_pipeline.summary import counts_text

    for run in runs:
        typer.echo(f"as of {run['as_of']}: {counts_text(run['counts'])}")
        typer.echo(f"    summary: {run['summary_path']}")
    typer.echo(f"{len(runs)} as-of run(s); gate tables and reports: Prefect artifacts "
               "'gate-table' / 'evaluation-report' of each weekly-training run")


@app.command()
def main(
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """The main job on the embedded default: synthetic athletes, training, briefs."""
    _quiet_env()
    settings = None
    try:
        settings = _settings(config)
        check_home(settings)
        check_source(settings, None, None, None)
    except UserError as exc:
        write_not_started(None, settings, str(exc), "main")
        raise
    from flows.daily_briefs import daily_briefs
    from flows.weekly_training import weekly_training
    from veloready_pipeline.summary import counts_text

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
    ui = settings.ui
    typer.echo(f"evaluation report: {summary.get('report', {}).get('html', '')} "
               f"({counts_text(summary['counts'])})")
    typer.echo(f"MLflow UI:        MLFLOW_DISABLE_TELEMETRY=true .venv/bin/mlflow ui "
               f"--backend-store-uri {uri} --port {ui.mlflow_port}  -> "
               f"{ui.mlflow_url.rstrip('/')}/#/experiments?workflowType=machine_learning")
    typer.echo("Prefect UI:       PREFECT_HOME=.prefect PREFECT_SERVER_ANALYTICS_ENABLED=false "
               f"PREFECT_SERVER_API_PORT={ui.prefect_port} .venv/bin/prefect server start  -> "
               f"http://127.0.0.1:{ui.prefect_port}")


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
    except OSError as exc:  # e.g. the state file's folder is not writable
        raise refuse(f"{exc.filename or state}: {exc.strerror or exc}") from exc
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
        raise UserError(f"--summary-json {summary_json} is not JSON ({_one_line(exc)})") \
            from exc
    if not isinstance(summary, dict) or "rows" not in summary:
        why = (f"the run did not start: {summary.get('reason')}"
               if isinstance(summary, dict) and summary.get("status") == "not_started"
               else "no 'rows'")
        raise UserError(f"--summary-json {summary_json} is not a run summary ({why})")
    if out is None:
        settings = _settings(config)
        out = settings.resolve(settings.paths.reports_dir) / "latest"
    from veloready_pipeline.report import build_report

    paths = build_report(summary, out)
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

if __name__ == "__main__":
    app()
