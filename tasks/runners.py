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

        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": ex.local_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=1)
