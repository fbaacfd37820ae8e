"""Shared test set-up: every test session gets its own homes, never the user's.

Prefect, MLflow and the pipeline's own paths all point into a temporary folder, and
Prefect analytics are off, so tests run offline and never touch a shared home.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="veloready-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The pipeline's INFO logs still reach the API (tests read them there), but the console
# shows warnings only: Prefect re-creates its console handler on the stream of the moment
# (inside a CliRunner.invoke that stream is closed afterwards), and quiet test output.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ["VELOREADY_HOME"] = str(_SESSION_HOME / "home")
os.environ.pop("VELOREADY_CONFIG", None)
os.environ.pop("OPENAI_API_KEY", None)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
(_SESSION_HOME / "home").mkdir(parents=True, exist_ok=True)

import pytest  # noqa: E402


@pytest.fixture
def veloready_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh VELOREADY_HOME for one test: data/, mlflow/ and OTA output go under it."""
    monkeypatch.setenv("VELOREADY_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API (temporary database) for every flow test of the session.

    Starting it costs 10-60 s on a busy 2-core machine, so it is shared.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
