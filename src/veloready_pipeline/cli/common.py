"""Small helpers the command groups share: settings, quiet start-up, option lists.

Nothing heavy is imported here (nor at module level anywhere in the CLI package), so
`veloready --help` stays fast.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

from veloready_pipeline.cli.errors import UserError


def load(config: Path | None, **overrides: Any) -> Any:
    """The validated settings; ``None`` overrides are left out.

    Options that change a setting (``--mapping``) are passed here as overrides, so they
    are validated with the rest: settings are frozen once validated.
    """
    from veloready_pipeline.config import ConfigError, load_settings

    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def quiet_env() -> None:
    """Analytics and telemetry off, the pipeline's logs on (train, backfill, main)."""
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


def quiet_warnings() -> None:
    """Analytics off, Prefect at WARNING (registry, ota promote, monitor, briefs)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def csv(value: str | None) -> list[str] | None:
    """A comma separated option as a list (``None`` when not given or empty)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def who(name: str | None) -> str:
    """The name given, else the login name, else ``unknown``."""
    if name and name.strip():
        return name.strip()
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"
