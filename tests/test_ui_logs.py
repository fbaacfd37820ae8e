"""The pipeline's own logs reach the Prefect UI (the API's stored logs of each run).

A real `prefect server start` (SQLite, its own PREFECT_HOME, a free port) and a real
`veloready train` run against it on three tiny athletes; the test then reads the flow
run's logs back through the API (`/api/logs/filter`, what the UI's Logs tab shows).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from veloready_pipeline.simulate import simulate_athletes

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flow_run_logs(api: str, flow_run_ids: list[str]) -> list[dict]:
    import httpx

    logs: list[dict] = []
    while True:
        page = httpx.post(f"{api}/logs/filter", timeout=30, json={
            "logs": {"flow_run_id": {"any_": flow_run_ids}},
            "sort": "TIMESTAMP_ASC", "limit": 200, "offset": len(logs)}).json()
        logs += page
        if len(page) < 200:
            return logs


def test_pipeline_info_logs_reach_a_prefect_server(tmp_path: Path) -> None:
    import httpx

    sim = simulate_athletes(n_athletes=3, days=130, seed=3, profile="easy")
    data = tmp_path / "athletes.parquet"
    sim.frame.to_parquet(data)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false"}
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
         "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prefect server did not become healthy"
            time.sleep(0.5)
        summary = tmp_path / "summary.json"
        client_env = env | {"PREFECT_API_URL": api, "VELOREADY_HOME": str(tmp_path / "home"),
                            "VELOREADY_TUNING__N_TRIALS": "2"}
        run = subprocess.run(
            [str(Path(sys.executable).parent / "veloready"), "train", "--data", str(data),
             "--families", "recovery", "--summary-json", str(summary)],
            env=client_env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        flow_run_id = json.loads(summary.read_text())["flow_run_id"]
        # the training sub-flow's logs belong to its own flow run
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).json()
        ids = [r["id"] for r in runs]
        assert flow_run_id in ids
        logs = _flow_run_logs(api, ids)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()

    ours = [x for x in logs if x["name"].startswith("veloready_pipeline")]
    messages = [x["message"] for x in ours]
    # stages with counts, every athlete's verdict, the registry and the end of the run
    assert any(m.startswith("ingest: 388 rows of 3 athletes") for m in messages), messages
    assert any(m.startswith("validate: 3 athletes checked") for m in messages), messages
    for aid in ("sim-0001", "sim-0002", "sim-0003"):
        assert any(m.startswith(f"recovery {aid}: gate ") for m in messages), messages
    assert any(m.startswith("register recovery: 3 runs logged") for m in messages), messages
    assert any(m.startswith("publish: ") for m in messages), messages
    assert all(x["level"] >= 20 for x in ours)
    own_flow = [x["message"] for x in logs if x["name"] == "prefect.flow_runs"]
    assert any(m.startswith("done: recovery: 3 registered") for m in own_flow), own_flow
    # third-party chatter stays out (their warnings would still come through)
    names = {x["name"].split(".")[0] for x in logs}
    assert names <= {"veloready_pipeline", "prefect"}, names
    assert not [x for x in logs if x["name"].startswith(("prefect.", "prefect")) and
                not x["name"].startswith(("prefect.flow_runs", "prefect.task_runs"))]
    print(f"{len(logs)} log lines stored for the run, {len(ours)} from veloready_pipeline")


def test_pipeline_logs_reach_the_local_api(prefect_api, tmp_path, monkeypatch) -> None:
    """Local mode (no server configured: Prefect's own API), in this process."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from typer.testing import CliRunner

    from veloready_pipeline.cli import app

    sim = simulate_athletes(n_athletes=2, days=130, seed=3, profile="easy")
    data = tmp_path / "athletes.parquet"
    sim.frame.to_parquet(data)
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(
        app, ["train", "--data", str(data), "--families", "recovery",
              "--summary-json", str(summary)],
        env={"VELOREADY_HOME": str(tmp_path / "home"), "VELOREADY_TUNING__N_TRIALS": "2"},
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    flow_run_id = json.loads(summary.read_text())["flow_run_id"]

    async def read() -> list:
        from prefect.logging.handlers import APILogHandler

        await APILogHandler.aflush()
        async with get_client() as client:
            return await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
                any_=[flow_run_id])))

    logs = asyncio.run(read())
    messages = [x.message for x in logs if x.name.startswith("veloready_pipeline")]
    assert any(m.startswith("ingest: ") and str(data) in m for m in messages), messages
    assert any(m.startswith("validate: 2 athletes checked") for m in messages), messages
    assert any(m.startswith("publish: ") for m in messages), messages
