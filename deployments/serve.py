"""Serve every VeloReady deployment from this process (Prefect's `serve`).

    PREFECT_HOME=.prefect .venv/bin/prefect server start          # terminal 1: API + UI
    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m deployments.serve

The weekly training schedule, its backfill, the daily briefs schedule and the briefs
backfill then appear under Deployments in the UI; "Quick run" / "Custom run" trigger
them with parameters.
"""

from __future__ import annotations

import os

from prefect import serve


def all_deployments() -> list:
    from deployments.briefs_deployments import brief_deployments
    from deployments.monitoring_deployments import monitoring_deployments
    from deployments.training_deployments import training_deployments

    return [*training_deployments(), *brief_deployments(), *monitoring_deployments()]


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    serve(*all_deployments())
