"""The pipeline's own logs, shown in the Prefect UI next to each flow run.

Library code logs with plain `logging` under the ``veloready_pipeline`` logger (it
never calls Prefect's `get_run_logger`). Prefect forwards such loggers to its API when
they are named in ``PREFECT_LOGGING_EXTRA_LOGGERS`` (Prefect's documented setting for
"logs from other libraries"); a record logged inside a flow or task run is then stored
with that run and appears in its Logs tab, in local (ephemeral) and server mode alike.

`prefect_logging_env` sets, before Prefect is imported (Prefect reads its logging
settings once, at import):

* ``PREFECT_LOGGING_EXTRA_LOGGERS`` gains ``veloready_pipeline``;
* ``PREFECT_LOGGING_LEVEL=WARNING``: Prefect's own internals (client, events, server)
  stay quiet, as do third-party libraries (the root logger stays at WARNING);
* the flow-run and task-run loggers (what `get_run_logger` returns) log INFO;
* MLflow's own loggers WARNING (``MLFLOW_LOGGING_LEVEL``);
* records logged outside any run (e.g. `veloready simulate`) are not sent anywhere
  (``PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore``) instead of warning.

Each can still be overridden from the environment (set it before running).
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGE_LOGGER = "veloready_pipeline"

# Libraries whose INFO chatter is not the pipeline's story.
_NOISY = ("mlflow", "alembic", "coremltools", "urllib3", "httpx", "httpcore",
          "great_expectations", "optuna", "numexpr", "distributed", "matplotlib")


def prefect_logging_env() -> None:
    """Point Prefect's logging at the pipeline's loggers (call before importing Prefect).

    When Prefect is already imported in this process (a test session, a notebook),
    the same forwarding is applied to the live logging set-up, as Prefect itself does
    for its extra loggers.
    """
    names = [n.strip() for n in os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",")
             if n.strip()]
    if PACKAGE_LOGGER not in names:
        names.append(PACKAGE_LOGGER)
    os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(names)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # MLflow configures its own loggers at import, at INFO unless told otherwise.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    pipeline_logger_level()
    if "prefect.logging.configuration" in sys.modules:
        _attach_to_live_prefect()


def pipeline_logger_level(level: int = logging.INFO) -> None:
    """The pipeline logs INFO (stages, counts, verdicts); third-party loggers WARNING."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(level)
    for name in _NOISY:
        noisy = logging.getLogger(name)
        if noisy.level == logging.NOTSET or noisy.level < logging.WARNING:
            noisy.setLevel(logging.WARNING)
    # Great Expectations sets this module logger to INFO when imported (after us), so a
    # level would be undone: a filter on the logger stays.
    gx_base = logging.getLogger("great_expectations.data_context.types.base")
    if not any(isinstance(f, _WarningsOnly) for f in gx_base.filters):
        gx_base.addFilter(_WarningsOnly())
    quiet_coremltools()


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def _attach_to_live_prefect() -> None:
    """Give the package logger the API handler(s) of Prefect's ``prefect.extra`` logger
    and the flow/task-run loggers INFO, when Prefect set logging up before us."""
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG

    if not PROCESS_LOGGING_CONFIG:
        return  # Prefect will read the environment when it sets logging up
    ours = logging.getLogger(PACKAGE_LOGGER)
    for handler in logging.getLogger("prefect.extra").handlers:
        if not any(type(h) is type(handler) for h in ours.handlers):
            ours.addHandler(handler)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        run_logger = logging.getLogger(name)
        if run_logger.getEffectiveLevel() > logging.INFO:
            run_logger.setLevel(logging.INFO)


class _CoremltoolsNoise(logging.Filter):
    """Drops coremltools' import-time notes that say nothing about our models.

    On Linux coremltools cannot load its macOS runtime (``libcoremlpython``: prediction
    only, conversion works), and it notes every installed library newer than the
    versions it was tested with. Both repeat on every import, in every export process;
    the exports themselves are checked (read-back parity) and their errors still log.
    """

    _DROP = ("has not been tested with coremltools", "is not supported. Minimum required",
             "libcoremlpython")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(part in msg for part in self._DROP)


def quiet_coremltools() -> None:
    """Install the coremltools noise filter once (call before importing coremltools)."""
    logger = logging.getLogger("coremltools")
    if not any(isinstance(f, _CoremltoolsNoise) for f in logger.filters):
        logger.addFilter(_CoremltoolsNoise())


def get_logger(name: str) -> logging.Logger:
    """A logger under the package logger (``veloready_pipeline.<name>``)."""
    if not name.startswith(PACKAGE_LOGGER):
        name = f"{PACKAGE_LOGGER}.{name}"
    return logging.getLogger(name)
