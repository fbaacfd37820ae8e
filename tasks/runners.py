"""Where the per-chunk work runs (Prefect task runners): threads locally, or a Dask cluster.

Configuration, not code, decides: with ``execution.dask_address`` set, chunks go to
that existing Dask scheduler through prefect-dask; with ``execution.local_workers``
> 1 a local Dask cluster of that many worker *processes* is started (training is
CPU-bound Python + C, so processes use both cores where threads would fight over
the GIL); otherwise chunks run in a small thread pool in the flow's process.
"""

from __future__ import annotations

from typing import Any

from veloready_pipeline.config import Settings


def make_task_runner(settings: Settings) -> Any:
    """The Prefect task runner for the training stage."""
    ex = settings.execution
    if ex.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=ex.dask_address)
    if ex.local_workers > 1:
        from prefect_dask import DaskTaskRunner

        cluster_kwargs: dict[str, Any] = {
            "n_workers": ex.local_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
        api_url = _ephemeral_api_url()
        if api_url:
            cluster_kwargs["env"] = {"PREFECT_API_URL": api_url}
        return DaskTaskRunner(cluster_kwargs=cluster_kwargs)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=1)


def max_in_flight(settings: Settings) -> int:
    """How many training chunks may be submitted and not yet collected at once.

    ``execution.max_in_flight`` when set; otherwise two per local worker (one running,
    one queued, so no worker waits), or 32 for an existing Dask cluster of unknown size.
    """
    ex = settings.execution
    if ex.max_in_flight:
        return ex.max_in_flight
    return 32 if ex.dask_address else 2 * ex.local_workers


def _ephemeral_api_url() -> str | None:
    """The API the running flow reports to, when Prefect runs in its local mode.

    Without ``PREFECT_API_URL`` the flow's process starts an ephemeral API server; worker
    processes would each start one of their own (~225 MiB and a few seconds each) and
    report the training tasks there, out of sight of the flow's server. Pointing them at
    the flow's server keeps one server and every task run under its flow run.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None  # a configured server: workers inherit the environment
    ctx = FlowRunContext.get()
    client = getattr(ctx, "client", None) if ctx else None
    url = getattr(client, "api_url", None)
    return str(url) if url else None
