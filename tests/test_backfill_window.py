"""Backfills and as-of runs say what they did: a window without rows fails naming the
data's dates; deployments carry no stale default window."""

from __future__ import annotations

from pathlib import Path

import pytest

from veloready_pipeline.simulate import simulate_athletes


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    sim = simulate_athletes(n_athletes=2, days=40, seed=3, profile="easy",
                            start_date="2026-03-01")
    path = tmp_path_factory.mktemp("data") / "athletes.parquet"
    sim.frame.to_parquet(path)
    return path


@pytest.mark.slow  # Prefect test harness (local API server)
def test_as_of_before_the_data_fails_naming_its_dates(prefect_api, small_data, veloready_home):
    from flows.weekly_training import weekly_training
    from veloready_pipeline.sources.common import NoDataError

    with pytest.raises(NoDataError, match=r"as of 2026-01-01: the data covers "
                       r"dates 2026-03-01\.\.2026-04-09 \(2 athletes\); pick an as-of date "
                       r"from 2026-03-01 to 2026-04-09"):
        weekly_training(data=str(small_data), as_of="2026-01-01", families=["recovery"],
                        progress=False)


@pytest.mark.slow
def test_backfill_window_before_the_data_fails_before_training(prefect_api, small_data,
                                                               veloready_home):
    from flows.weekly_training import weekly_training_backfill
    from veloready_pipeline.sources.common import NoDataError

    with pytest.raises(NoDataError, match=r"backfill 2025-12-01\.\.2026-01-05: every as-of "
                       r"date is before the data, which covers 2026-03-01\.\.2026-04-09"):
        weekly_training_backfill(start="2025-12-01", end="2026-01-05", data=str(small_data),
                                 families=["recovery"])


def test_backfill_deployments_require_a_window():
    from deployments.training_deployments import training_deployments

    weekly, backfill = training_deployments()
    assert backfill.name == "backfill"
    assert not {"start", "end"} & set(backfill.parameters)
    assert set(backfill._parameter_openapi_schema.required) == {"start", "end"}


def test_no_rows_message_names_the_data_window():
    import pandas as pd

    from veloready_pipeline.ingest import no_rows_message
    from veloready_pipeline.summary import counts_text

    raw = pd.DataFrame({"athlete_id": ["a", "a", "b"],
                        "date": pd.to_datetime(["2026-02-01", "2026-02-20", "2026-03-01"])})
    msg = no_rows_message(raw, raw, "2026-01-15", None)
    assert msg == ("no rows to train on as of 2026-01-15: the data covers dates "
                   "2026-02-01..2026-03-01 (2 athletes); pick an as-of date from 2026-02-01 "
                   "to 2026-03-01")
    assert "every athlete in the window was quarantined by validation (2)" in (
        no_rows_message(raw, raw.iloc[:0], None, None, n_quarantined=2))
    assert no_rows_message(raw, raw.iloc[:0], None, None, since="2026-05-01").startswith(
        "no rows to train on since 2026-05-01: the data covers dates 2026-02-01..2026-03-01")
    assert counts_text({"zones": {"gate_failed": 2, "registered": 1}}) == (
        "zones: 2 gate failed, 1 registered")


def test_backfill_dates_inside_the_data():
    import datetime as dt

    from veloready_pipeline.ingest import backfill_dates
    from veloready_pipeline.sources.common import NoDataError

    window = ("2026-03-01", "2026-04-09")
    dates, before = backfill_dates("2026-02-20", "2026-03-20", 7, window)
    assert [d.isoformat() for d in dates] == ["2026-03-06", "2026-03-13", "2026-03-20"]
    assert before == [dt.date(2026, 2, 20), dt.date(2026, 2, 27)]
    with pytest.raises(NoDataError, match="covers 2026-03-01..2026-04-09"):
        backfill_dates("2026-01-01", "2026-02-28", 7, window)
    with pytest.raises(ValueError, match="before start"):
        backfill_dates("2026-03-10", "2026-03-01", 7, window)


def test_cli_backfill_before_the_data_is_one_line_exit_2(small_data, veloready_home):
    import subprocess
    import sys

    run = subprocess.run(
        [str(Path(sys.executable).parent / "veloready"), "backfill", "--start", "2025-01-01",
         "--end", "2025-02-01", "--data", str(small_data), "--families", "recovery"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: backfill 2025-01-01..2025-02-01: every as-of date is before the data, which "
        "covers 2026-03-01..2026-04-09; pick dates in that range"]


def test_cli_train_as_of_before_the_data_is_one_line_exit_2(small_data, veloready_home):
    import subprocess
    import sys

    run = subprocess.run(
        [str(Path(sys.executable).parent / "veloready"), "train", "--as-of", "2025-01-01",
         "--data", str(small_data), "--families", "recovery"],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: no rows to train on as of 2025-01-01: the data covers dates "
        "2026-03-01..2026-04-09 (2 athletes); pick an as-of date from 2026-03-01 to "
        "2026-04-09"]
