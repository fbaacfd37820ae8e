"""End to end: with manual review on, a weekly run pauses on a real Prefect server, the
CLI approves some athletes and rejects another, the run resumes and ships only those."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_S = 180
PAUSE_TIMEOUT_S = 600
FINISH_TIMEOUT_S = 600


def _client(settings):
    """A client on this test's store for runs *and* models (MLflow's registry URI is a
    process-wide setting that an earlier test may have pointed elsewhere)."""
    from mlflow.tracking import MlflowClient

    uri = settings.mlflow_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` with its own home, stopped after the module."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = os.environ | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("prefect server did not become healthy in time")
            time.sleep(0.5)
        yield {"api": api, "home": home}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _runs(api: str, state: str | None = None) -> list[dict]:
    body: dict = {"flows": {"name": {"any_": ["weekly-training"]}}}
    if state:
        body["flow_runs"] = {"state": {"type": {"any_": [state]}}}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"flow process ended (rc {proc.returncode}) before {what}:\n"
                                 f"{log.read_text()[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _scenario(tmp_path: Path, prefect_server: dict) -> tuple[Path, Path, Path, dict]:
    """Three simulated riders, recovery only, manual review: (home, data, config, env)."""
    from veloready_pipeline.simulate import simulate_athletes, write_simulation

    home = tmp_path / "home"
    home.mkdir()
    data = write_simulation(simulate_athletes(3, 150, seed=3, profile="easy"), tmp_path / "sim")
    config = tmp_path / "veloready.yaml"
    config.write_text(yaml.safe_dump({
        "families": ["recovery"], "tuning": {"n_trials": 3}, "review_mode": "manual",
        "review_poll_s": 1, "review_timeout_s": PAUSE_TIMEOUT_S + FINISH_TIMEOUT_S,
    }))
    env = os.environ | {"VELOREADY_HOME": str(home), "VELOREADY_CONFIG": str(config),
                        "PREFECT_API_URL": prefect_server["api"],
                        "PREFECT_HOME": str(prefect_server["home"]),
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return home, data, config, env


def _review_paused_run(api: str, env: dict, flow: subprocess.Popen, flow_log: Path
                       ) -> tuple[dict, str, str, list[str]]:
    """Wait for the pause, check the review artifact, then approve one athlete and reject
    another through the CLI. Returns (paused run, approved, rejected, left pending)."""
    (paused,) = _wait_for(lambda: _runs(api, "PAUSED"), PAUSE_TIMEOUT_S,
                          "the weekly run to pause for review", flow, flow_log)
    arts = httpx.post(f"{api}/artifacts/filter", timeout=10, json={
        "artifacts": {"key": {"any_": ["review-challengers"]}}}).json()
    assert arts and "Challengers awaiting review" in arts[0]["data"]
    assert "[plot](" in arts[0]["data"]  # the residual plot of each challenger's run

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "veloready"), "registry", "review", *args],
                              cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)

    listing = cli()
    assert listing.returncode == 0, listing.stderr
    pending = sorted({line.split()[0] for line in listing.stdout.splitlines()
                      if line.startswith("  sim-")})
    assert len(pending) >= 2, listing.stdout
    approved, rejected, left = pending[0], pending[1], pending[2:]
    for aid in pending:
        assert paused["id"] and aid in arts[0]["data"]

    bad = cli("--approve", "sim-9999", "--reviewer", "tester")
    assert bad.returncode == 2 and "no pending challenger" in bad.stderr

    decided = cli("--approve", approved, "--reject", rejected, "--reason",
                  "shift work week: residuals look off", "--reviewer", "tester")
    assert decided.returncode == 0, decided.stdout + decided.stderr
    assert f"resumed paused weekly run {paused['id']}" in decided.stdout
    return paused, approved, rejected, left


def _check_registry(settings, exports: Path, approved: str, rejected: str,
                    left: list[str]) -> None:
    """Approved: champion with the review tags; rejected: no champion, the reason kept;
    the others still pending (challenger, exported, not shipped)."""
    from veloready_pipeline.lifecycle.store import CHALLENGER, CHAMPION, registered_name

    client = _client(settings)

    def alias(aid: str, name: str) -> str | None:
        try:
            return str(client.get_model_version_by_alias(
                registered_name(settings, "recovery", aid), name).version)
        except Exception:  # noqa: BLE001 - no such alias
            return None

    def tags(aid: str) -> dict:
        return client.get_model_version(registered_name(settings, "recovery", aid), "1").tags

    assert alias(approved, CHAMPION) == "1" and alias(approved, CHALLENGER) is None
    t = tags(approved)
    assert (t["review_decision"], t["reviewer"], t["review_source"]) == (
        "approved", "tester", "cli"), t
    assert t["reviewed_at"] and t["rollout_percent"] == "10"
    assert alias(rejected, CHAMPION) is None
    t = tags(rejected)
    assert t["review_decision"] == "rejected"
    assert t["reason"] == "shift work week: residuals look off"
    for aid in left:  # not named: still pending, exported but not shipped
        assert alias(aid, CHAMPION) is None and alias(aid, CHALLENGER) == "1"
        assert "review_decision" not in tags(aid)
        assert (exports / aid / "v1" / "export.json").exists()


def _check_shipped(ota: Path, exports: Path, env: dict, approved: str, rejected: str) -> None:
    """Only the approved athlete has an OTA manifest (10 % rollout) and it verifies."""
    assert sorted(p.name for p in ota.iterdir() if (p / "manifest.json").exists()) == [
        approved]
    assert not (exports / rejected).exists()
    manifest = json.loads((ota / approved / "manifest.json").read_text())
    assert manifest["rollout"]["recovery"]["percent"] == 10
    assert {m["registry_version"] for m in manifest["models"]} == {"1"}
    verify = subprocess.run([str(BIN / "veloready"), "ota", "verify", str(ota)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and "1 manifest(s) verified" in verify.stdout, verify.stdout


def _check_summary(summary: Path, approved: str, rejected: str) -> None:
    rows = {r["athlete_id"]: r for r in json.loads(summary.read_text())["rows"]}
    assert rows[approved]["champion"] and not rows[rejected]["champion"]
    assert rows[rejected]["reason"].startswith("rejected by tester")
    assert "ota_manifest" in rows[approved]["artifacts"]
    assert "ota_manifest" not in rows[rejected]["artifacts"]


@pytest.mark.slow
def test_weekly_run_pauses_for_review_and_ships_only_approved(prefect_server, tmp_path,
                                                              monkeypatch):

    from veloready_pipeline.config import load_settings

    home, data, config, env = _scenario(tmp_path, prefect_server)
    summary = tmp_path / "summary.json"
    flow_log = tmp_path / "flow.log"
    log_fh = flow_log.open("w")
    flow = subprocess.Popen(
        [str(BIN / "veloready"), "train", "--data", str(data), "--summary-json", str(summary)],
        cwd=REPO, env=env, stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        paused, approved, rejected, left = _review_paused_run(
            prefect_server["api"], env, flow, flow_log)
        flow.wait(timeout=FINISH_TIMEOUT_S)
        assert flow.returncode == 0, flow_log.read_text()[-4000:]
    finally:
        if flow.poll() is None:
            flow.kill()
        log_fh.close()

    state = httpx.get(f"{prefect_server['api']}/flow_runs/{paused['id']}", timeout=10).json()
    assert state["state"]["type"] == "COMPLETED"

    monkeypatch.setenv("VELOREADY_HOME", str(home))
    settings = load_settings(config)
    ota = settings.resolve(settings.paths.ota_dir)
    exports = settings.resolve(settings.paths.data_dir) / "exports" / "recovery"
    _check_registry(settings, exports, approved, rejected, left)
    _check_shipped(ota, exports, env, approved, rejected)
    _check_summary(summary, approved, rejected)
