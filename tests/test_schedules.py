"""Scheduled deployments really get scheduled flow runs from a Prefect server.

A real `prefect server start` (SQLite, its own PREFECT_HOME, a free port, the scheduler
loop shortened to 2 s) and our real deployments (`deployments.serve.all_deployments`,
registered with the API as `serve` does, without running a worker). The server's
scheduler service must then create SCHEDULED flow runs for the weekly cron deployment
at its cron times (Mondays 02:00 UTC), and its log must hold no scheduler error.

Regression: with SQLAlchemy 2.1.9 the scheduler of Prefect 3.8.8 fails on every loop
with `InvalidRequestError: Can't evaluate bulk DML statement` and creates no run, so
the weekly deployment never ran. SQLAlchemy is pinned to 2.0.x for this.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from deployments.training_deployments import WEEKLY_CRON
from helpers_prefect import running_prefect_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scheduler_server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str], Path]]:
    """`prefect server start` with a 2 s scheduler loop; yields the API URL, a client
    environment and the server's log file."""
    home = tmp_path_factory.mktemp("prefect-sched")
    loops = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
             "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2"}
    with running_prefect_server(home, loops) as (api, env, log_path):
        yield api, env | {"PREFECT_API_URL": api}, log_path


def test_weekly_cron_deployment_gets_scheduled_runs(scheduler_server) -> None:
    import httpx

    api, env, log_path = scheduler_server
    # Register every deployment with the API the way `python -m deployments.serve` does
    # (schedules active), without starting a runner.
    register = ("from deployments.serve import all_deployments\n"
                "print(' '.join(str(d.apply()) for d in all_deployments()))\n")
    env = env | {"PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", register], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    deployment = httpx.get(f"{api}/deployments/name/weekly-training/weekly",
                           timeout=30).json()
    assert deployment["schedules"], deployment
    assert deployment["schedules"][0]["schedule"]["cron"] == WEEKLY_CRON
    assert deployment["schedules"][0]["active"] is True

    runs: list[dict] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", timeout=30, json={
            "flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                          "state": {"type": {"any_": ["SCHEDULED"]}}},
            "sort": "EXPECTED_START_TIME_ASC", "limit": 50}).json()
        if runs:
            break
        time.sleep(1)
    log = log_path.read_text()
    errors = log.count("Can't evaluate bulk DML statement")
    assert runs and not errors, (
        f"{len(runs)} scheduled flow runs for weekly-training/weekly within 60 s, "
        f"{errors} 'Can't evaluate bulk DML statement' errors in the server log; "
        "its tail:\n" + log[-3000:])
    print(f"{len(runs)} scheduled runs, first at {runs[0]['expected_start_time']}")
    # Prefect schedules at least its minimum number of future runs; each at the cron time.
    assert len(runs) >= 3, len(runs)
    for run in runs:
        when = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
        assert (when.weekday(), when.hour, when.minute) == (0, 2, 0), when
        assert when.utcoffset().total_seconds() == 0, when
    # Neither scheduler task (schedule_deployments, schedule_recent_deployments) failed.
    failed = [line for line in log.splitlines() if "ERROR" in line and "schedule_" in line]
    assert not failed, failed[:5]
