"""Serve every VeloReady deployment from this process (Prefect's `serve`).

    PREFECT_HOME=.prefect .venv/bin/prefect server start          # terminal 1: API + UI
    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m deployments.serve

The weekly training schedule, its backfill, the daily briefs schedule, the briefs
backfill and the daily monitoring schedule then appear under Deployments in the UI;
"Quick run" / "Custom run" trigger them with parameters.

Ctrl-C (SIGINT) or SIGTERM (`kill`, a process manager, `docker stop`) stop it the same
way: the runner's task is cancelled inside its event loop, so it leaves cleanly (runs
it started are left to finish or are reported by Prefect, schedules are paused) and
the process exits 0. Prefect's own SIGTERM handler calls its async stop without
awaiting it ("coroutine 'Runner.astop' was never awaited"), which this replaces.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from veloready_pipeline.logs import prefect_logging_env

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
prefect_logging_env()  # before Prefect is imported: the flows' logs reach the UI


def all_deployments() -> list:
    from deployments.briefs_deployments import brief_deployments
    from deployments.monitoring_deployments import monitoring_deployments
    from deployments.training_deployments import training_deployments

    return [*training_deployments(), *brief_deployments(), *monitoring_deployments()]


async def serve_until_signalled(deployments: list[Any]) -> str:
    """Run a Prefect `Runner` for ``deployments`` until SIGINT or SIGTERM; returns the
    signal's name."""
    from prefect.runner import Runner

    runner = Runner()
    for deployment in deployments:
        await runner.aadd_deployment(deployment)  # registers it with the API
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stopped.set()

    serving = asyncio.create_task(runner.start())
    await asyncio.sleep(0)  # Runner.start installs its SIGTERM handler first; ours wins
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    waiting = asyncio.create_task(stopped.wait())
    done, _ = await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if serving in done:  # the runner ended on its own (an error): surface it
        waiting.cancel()
        serving.result()
        return "runner exit"
    serving.cancel()  # unwinds `async with runner`: pauses schedules, closes clients
    try:
        await serving
    except asyncio.CancelledError:
        pass
    return received[0]


def main() -> int:
    deployments = all_deployments()
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    print(f"serving {len(deployments)} deployments: {names}", flush=True)
    print("stop with Ctrl-C or SIGTERM", flush=True)
    name = asyncio.run(serve_until_signalled(deployments))
    print(f"{name} received: stopped serving (schedules paused)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
