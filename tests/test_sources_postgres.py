"""PostgreSQL source against the real server (127.0.0.1:5432, database ``test``).

Each test module run creates its own uniquely named schema, fills it, reads it back
through the source and drops it. Where no server can be reached the tests are
skipped with the connection error; ``VELOREADY_TEST_PG_URL`` points them elsewhere.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa

from veloready_pipeline.config import SourceSettings
from veloready_pipeline.sources import make_source
from veloready_pipeline.sources.postgres import PostgresSource, is_database_url, normalise_url

PG_URL = os.environ.get("VELOREADY_TEST_PG_URL",
                        "postgresql+psycopg2://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    """A fresh schema with two tables; dropped afterwards."""
    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 5})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {str(exc.orig).strip()}")
    name = f"vr_test_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        conn.execute(sa.text(f"""
            CREATE TABLE "{name}".daily (
                athlete_id text NOT NULL, date date NOT NULL,
                hrv_ms double precision, resting_hr integer, sleep_score numeric(5,1),
                tss double precision, recovery_score double precision,
                sleep_text text, app_version text)"""))
        conn.execute(sa.text(f'INSERT INTO "{name}".daily VALUES '
                             "('b', '2024-01-01', 40.5, 55, 70.0, 0, 66, '7.5', 'x'),"
                             "('a', '2024-01-02', 61.0, 48, 81.5, 95.5, 72, 'eight', 'x'),"
                             "('a', '2024-01-01', 60.0, 49, NULL, 0, 70, '8', 'x')"))
        conn.execute(sa.text(f"""
            CREATE TABLE "{name}".backend_rows (
                user_id integer, day timestamptz, rmssd real, rhr real, readiness real)"""))
        conn.execute(sa.text(f'INSERT INTO "{name}".backend_rows VALUES '
                             "(7, '2024-03-01 23:30:00+00', 55, 50, 6.5),"
                             "(7, '2024-03-02 06:30:00+00', 57, 49, 7.0)"))
    try:
        yield name
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        engine.dispose()


def test_table_with_canonical_columns(schema: str) -> None:
    result = PostgresSource(PG_URL, table=f"{schema}.daily").load()
    frame = result.frame
    assert list(zip(frame["athlete_id"], frame["date"].dt.day, strict=True)) == [
        ("a", 1), ("a", 2), ("b", 1)
    ]
    assert frame["sleep_score"].dtype == "float64" and frame.iloc[1]["sleep_score"] == 81.5
    assert math.isnan(frame.iloc[0]["sleep_score"])
    assert frame.iloc[1]["tss"] == 95.5 and frame.iloc[2]["resting_hr"] == 55
    assert "app_version" not in frame and "sleep_text" not in frame
    assert list(frame["_line"]) == [1, 2, 3] and frame["_file"].str.endswith("daily").all()
    assert not result.issues
    assert result.notes == {"a": "no power data", "b": "no power data"}


def test_query_with_a_mapping_reports_bad_values(schema: str) -> None:
    query = (f'SELECT athlete_id AS who, date AS day, sleep_text FROM "{schema}".daily '
             "ORDER BY athlete_id, date")
    src = PostgresSource(PG_URL, query=query,
                         mapping={"athlete_id": "who", "date": "day", "sleep_hours": "sleep_text"})
    result = src.load()
    assert list(result.frame["sleep_hours"].fillna(-1)) == [8.0, -1, 7.5]
    [issue] = result.issues
    assert (issue.athlete_id, issue.line, issue.column) == ("a", 2, "sleep_text")
    assert issue.file.endswith("/test query")
    assert "'eight'" in issue.message and "left empty" in issue.message


def test_full_mapping_converts_zones_and_scales(schema: str) -> None:
    mapping = {
        "athlete": {"column": "user_id"},
        "date": {"column": "day", "timezone": "Europe/Oslo"},
        "fields": {"hrv_ms": "rmssd", "resting_hr": "rhr",
                   "recovery_score": {"column": "readiness", "scale": [0, 10]}},
    }
    result = PostgresSource(PG_URL, table=f"{schema}.backend_rows", mapping=mapping).load()
    frame = result.frame
    # 23:30 UTC on 1 March is 00:30 on 2 March in Oslo: both rows fall on 2 March, the
    # later one wins and the earlier one is reported.
    assert list(frame["date"]) == [pd.Timestamp("2024-03-02")]
    assert frame.iloc[0]["athlete_id"] == "7" and frame.iloc[0]["recovery_score"] == 70
    assert [(i.line, "superseded" in i.message) for i in result.issues] == [(1, True)]


def test_mapping_from_a_yaml_file(schema: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    mfile = tmp_path / "pg_mapping.yaml"
    mfile.write_text("athlete_id: user_id\ndate: day\nhrv_ms: rmssd\n", encoding="utf-8")
    cfg = SourceSettings(path=PG_URL, table=f"{schema}.backend_rows", mapping=mfile)
    result = make_source(cfg).load()
    # No time zone in a plain rename: a timestamptz counts on its day in the session zone.
    engine = sa.create_engine(PG_URL)
    with engine.connect() as conn:
        zone = conn.execute(sa.text("SHOW TimeZone")).scalar()
    engine.dispose()
    instants = pd.to_datetime(["2024-03-01 23:30:00+00", "2024-03-02 06:30:00+00"], utc=True)
    expected = sorted(set(instants.tz_convert(str(zone)).tz_localize(None).normalize()))
    assert list(result.frame["date"]) == expected
    assert result.frame["hrv_ms"].iloc[-1] == 57.0


def test_make_source_detects_the_url(schema: str) -> None:
    src = make_source(SourceSettings(path=PG_URL, table=f"{schema}.daily"))
    assert isinstance(src, PostgresSource)
    assert len(src.load().frame) == 3


def test_missing_table_and_bad_query_are_clear_errors(schema: str) -> None:
    with pytest.raises(ValueError, match="not found"):
        PostgresSource(PG_URL, table=f"{schema}.nope").load()
    with pytest.raises(ValueError, match="failed"):
        PostgresSource(PG_URL, query="SELECT no_such_column FROM pg_class").load()
    with pytest.raises(ValueError, match="no column"):
        PostgresSource(PG_URL, query="SELECT 1 AS x").load()


def test_unreachable_server_is_a_connection_error() -> None:
    src = PostgresSource("postgresql+psycopg2://postgres:secret@127.0.0.1:1/test", table="t")
    with pytest.raises(ConnectionError, match="cannot reach") as info:
        src.load()
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [("postgresql://u@h/db", True), ("postgresql+psycopg2://u@h/db", True),
     ("postgres://u@h/db", True), ("mysql://u@h/db", False), ("sqlite:///x.db", False),
     ("/data/file.csv", False)],
)
def test_is_database_url(url: str, expected: bool) -> None:
    assert is_database_url(url) is expected


def test_url_spellings_and_arguments() -> None:
    assert normalise_url("postgres://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ValueError, match="exactly one"):
        PostgresSource(PG_URL)
    with pytest.raises(ValueError, match="exactly one"):
        PostgresSource(PG_URL, table="t", query="select 1")
