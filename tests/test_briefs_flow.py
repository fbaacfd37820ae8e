"""The daily-briefs Prefect flow, its backfill, deployments and CLI, on tiny data.

Runs under Prefect's test harness (a temporary database, one per session), offline;
the LLM run talks to the loopback stub server.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from openai_stub_server import StubConfig, StubServer
from typer.testing import CliRunner

from veloready_pipeline.briefs.store import BriefStore
from veloready_pipeline.config import Settings

DAY = dt.date(2026, 3, 10)


@pytest.fixture
def canonical_file(tmp_path: Path) -> Path:
    """Four athletes x 20 days; 'broken' has an impossible resting HR on the brief date,
    'retired' stopped riding a month ago."""
    rng = np.random.default_rng(0)
    frames = []
    for athlete, end in (("a1", DAY), ("a2", DAY), ("broken", DAY),
                         ("retired", DAY - dt.timedelta(days=30))):
        dates = pd.date_range(end=pd.Timestamp(end), periods=20, freq="D")
        frames.append(pd.DataFrame({
            "athlete_id": athlete, "date": dates,
            "hrv_ms": rng.normal(60, 5, 20), "resting_hr": rng.normal(50, 2, 20),
            "sleep_score": rng.normal(78, 8, 20).clip(0, 100), "tss": rng.gamma(2, 30, 20),
            "recovery_score": rng.normal(65, 12, 20).clip(0, 100),
            "illness_confidence": 0.0, "planned_workout": "Endurance 2h Z2",
        }))
    frame = pd.concat(frames, ignore_index=True)
    frame.loc[(frame.athlete_id == "a2") & (frame.date == pd.Timestamp(DAY)),
              "illness_confidence"] = 0.9
    frame.loc[(frame.athlete_id == "broken") & (frame.date == pd.Timestamp(DAY)),
              "resting_hr"] = 500.0
    path = tmp_path / "canonical.parquet"
    frame.to_parquet(path, index=False)
    return path


def settings_for(tmp_path: Path, **briefs) -> Settings:
    return Settings(briefs={"provider": "rules", **briefs},
                    paths={"brief_store_url": f"sqlite:///{tmp_path / 'briefs.db'}",
                           "data_dir": str(tmp_path / "data")})


@pytest.mark.slow  # Prefect test harness (local API server)
def test_rules_flow_writes_stores_and_publishes(prefect_api, canonical_file, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.daily_briefs import daily_briefs

    settings = settings_for(tmp_path)
    state = daily_briefs(date=DAY.isoformat(), data=str(canonical_file), settings=settings,
                         return_state=True)
    summary = state.result()

    assert summary["provider"] == "rules" and summary["date"] == "2026-03-10"
    assert summary["counts"]["briefs"] == 2 and summary["counts"]["rules"] == 2
    assert [b["athlete_id"] for b in summary["briefs"]] == ["a1", "a2"]
    a2 = summary["briefs"][1]
    assert a2["decision"] == "rest" and a2["source"] == "rules" and a2["fallback_reason"] is None
    [failure] = summary["failures"]
    assert failure["athlete_id"] == "broken" and failure["field"] == "resting_hr"
    assert "retired" in summary["inactive"]
    assert summary["store"] == str(tmp_path / "briefs.db")
    keys = {r.key for r in BriefStore(settings.brief_store()).for_date(DAY)}
    assert keys == {"a1:2026-03-10:v2:rules", "a2:2026-03-10:v2:rules"}

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["daily-briefs-summary"]))
        )
    # This run's artifact: the session's Prefect API also holds other tests' briefs runs.
    mine = [a for a in artifacts if a.flow_run_id == state.state_details.flow_run_id]
    assert mine and "Daily briefs 2026-03-10" in mine[0].data
    assert "resting_hr" in mine[0].data

    again = daily_briefs(date="latest", data=str(canonical_file), settings=settings)
    assert again["date"] == "2026-03-10"  # the newest day in the file
    assert again["counts"]["cached"] == 2 and again["counts"]["written"] == 0


@pytest.mark.slow  # Prefect test harness (local API server)
def test_llm_flow_runs_a_handful_of_chunk_tasks(prefect_api, canonical_file, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.daily_briefs import daily_briefs

    stub = StubServer(StubConfig(bad_rate=0.0)).start()
    try:
        settings = settings_for(tmp_path, provider="auto", base_url=stub.base_url,
                                chunk_size=1)
        state = daily_briefs(date=DAY.isoformat(), data=str(canonical_file),
                             settings=settings, return_state=True)
        summary = state.result()
        assert summary["provider"] == "llm" and summary["counts"]["llm"] == 2
        assert stub.stats.chat_requests == summary["requests"] == 2
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        names = sorted(r.name for r in runs if r.name.startswith("generate-briefs"))
        assert names == ["generate-briefs-0", "generate-briefs-1"]  # one per chunk

        stub.reset()
        again = daily_briefs(date=DAY.isoformat(), data=str(canonical_file), settings=settings)
        assert stub.stats.chat_requests == 0 and again["counts"]["cached"] == 2
    finally:
        stub.stop()


@pytest.mark.slow  # Prefect test harness (local API server)
def test_backfill_loops_dates(prefect_api, canonical_file, tmp_path):
    from flows.daily_briefs import daily_briefs_backfill

    out = daily_briefs_backfill(start="2026-03-08", end="2026-03-10", athlete_ids=["a1"],
                                data=str(canonical_file), settings=settings_for(tmp_path))
    assert [d["date"] for d in out] == ["2026-03-08", "2026-03-09", "2026-03-10"]
    assert all(d["counts"]["briefs"] == 1 for d in out)


@pytest.mark.slow  # Prefect test harness (local API server)
def test_backfill_rejects_reversed_range(prefect_api, tmp_path):
    from flows.daily_briefs import daily_briefs_backfill

    with pytest.raises(ValueError, match="before start"):
        daily_briefs_backfill(start="2026-03-10", end="2026-03-01",
                              settings=settings_for(tmp_path))


@pytest.mark.slow  # Prefect test harness (local API server)
def test_bad_date_is_a_clear_error(prefect_api, tmp_path):
    from flows.daily_briefs import daily_briefs

    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        daily_briefs(date="10/03/2026", settings=settings_for(tmp_path))


def test_deployments():
    from deployments.briefs_deployments import DAILY_CRON, brief_deployments

    daily, backfill = brief_deployments()
    assert daily.name == "daily" and backfill.name == "backfill"
    [schedule] = daily.schedules
    assert schedule.schedule.cron == DAILY_CRON == "0 4 * * *"
    assert schedule.schedule.timezone == "UTC"
    # no default window (dates only make sense against the data): the run form asks
    assert not {"start", "end"} & set(backfill.parameters)
    assert set(backfill._parameter_openapi_schema.required) == {"start", "end"}
    assert "athlete_ids" in backfill._parameter_openapi_schema.properties


@pytest.mark.slow  # Prefect test harness (local API server)
def test_cli_writes_summary_json(prefect_api, canonical_file, tmp_path, monkeypatch):
    from veloready_pipeline.cli.briefs import briefs_command

    config = tmp_path / "config.yaml"
    config.write_text(
        f"briefs: {{provider: rules}}\npaths: {{brief_store_url: "
        f"'sqlite:///{tmp_path / 'cli.db'}'}}\n"
    )
    app = typer.Typer()
    app.command("briefs")(briefs_command)
    app.command("noop")(lambda: None)  # keep sub-command mode, as in the real CLI
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(app, [
        "briefs", "--data", str(canonical_file), "--date", "2026-03-10",
        "--summary-json", str(out), "--config", str(config), "--athletes", "a1,a2",
    ])
    assert result.exit_code == 0, result.output
    assert f"briefs stored in: {tmp_path / 'cli.db'}" in result.output
    rows = json.loads(out.read_text())["briefs"]
    assert [(r["athlete_id"], r["source"], r["fallback_reason"]) for r in rows] == [
        ("a1", "rules", None), ("a2", "rules", None)]
    assert rows[1]["decision"] == "rest" and not math.isnan(rows[0]["tss_aim"])


def test_cli_rejects_a_bad_date(tmp_path):
    from veloready_pipeline.cli.briefs import briefs_command

    app = typer.Typer()
    app.command("briefs")(briefs_command)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["briefs", "--date", "March 10"])
    assert result.exit_code != 0 and "YYYY-MM-DD" in result.output
