"""The pipeline's own logs reach the Prefect UI (the API's stored logs of each run).

A real `prefect server start` (SQLite, its own PREFECT_HOME, a free port) and a real
`veloready train` run against it on three tiny athletes; the test then reads the flow
run's logs back through the API (`/api/logs/filter`, what the UI's Logs tab shows).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers_prefect import running_prefect_server
from veloready_pipeline.simulate import simulate_athletes

pytestmark = pytest.mark.slow


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


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """`prefect server start` on SQLite in its own PREFECT_HOME and a free port; yields
    the API URL and the environment a client process needs."""
    home = tmp_path_factory.mktemp("prefect-server")
    with running_prefect_server(home) as (api, env, _log):
        yield api, env | {"PREFECT_API_URL": api}


def test_pipeline_info_logs_reach_a_prefect_server(prefect_server, tmp_path: Path) -> None:
    import httpx

    api, client_env = prefect_server
    sim = simulate_athletes(n_athletes=3, days=130, seed=3, profile="easy")
    data = tmp_path / "athletes.parquet"
    sim.frame.to_parquet(data)
    summary = tmp_path / "summary.json"
    client_env = client_env | {"VELOREADY_HOME": str(tmp_path / "home"),
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
    artifacts = httpx.post(f"{api}/artifacts/filter", timeout=30, json={
        "artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).json()

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

    # the run's artifacts: readable Markdown linking to the MLflow UI
    by_key = {a["key"]: a for a in artifacts}
    assert {"gate-table", "evaluation-report"} <= set(by_key), sorted(by_key)
    gate, report = by_key["gate-table"]["data"], by_key["evaluation-report"]["data"]
    assert by_key["evaluation-report"]["type"] == "markdown"
    for text in (gate, report):
        assert "nan" not in text.lower().replace("nano", "")
        assert "{'" not in text and "file://" not in text
    assert "| recovery | 3 |" in gate  # counts as a table, not a dict
    assert "http://127.0.0.1:5000/#/models/veloready-recovery-sim-0001/versions/1" in gate
    assert "http://127.0.0.1:5000/#/experiments/" in gate
    assert "## Pooled figures" in report and "[MLflow run of this report](" in report
    print("artifacts:", sorted(by_key))


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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_a_signal(prefect_server, tmp_path, sig) -> None:
    """`python -m deployments.serve` registers the deployments, then SIGINT (Ctrl-C) or
    SIGTERM stops it: exit 0, schedules paused, no "coroutine ... never awaited"."""
    import httpx

    api, env = prefect_server
    root = Path(__file__).resolve().parents[1]
    env = env | {"VELOREADY_HOME": str(tmp_path), "PYTHONWARNINGS": "default",
                 "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    proc = subprocess.Popen([sys.executable, "-m", "deployments.serve"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            # a real terminal's Ctrl-C: SIGINT not ignored in the child
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        names: set[str] = set()
        while time.monotonic() < deadline and len(names) < 5:
            assert proc.poll() is None, proc.stdout.read()
            deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
            names = {f"{d['flow_id']}/{d['name']}" for d in deps if not d["paused"]}
            time.sleep(1)
        assert len(names) == 5, names
        time.sleep(2)  # the runner polls at least once
        started = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"{sig.name} received: stopped serving" in out, out
    assert "never awaited" not in out and "Traceback" not in out, out
    deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    assert deps and all(d["paused"] for d in deps)
    print(f"{sig.name}: exit 0 after {took:.1f} s")
