"""make_source / detect_source_name: every kind detected, clear errors otherwise."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from veloready_pipeline.config import SourceSettings
from veloready_pipeline.sources import (
    CanonicalFileSource,
    GenericCsvSource,
    IntervalsSource,
    PMDataSource,
    PostgresSource,
    SourceDetectionError,
    detect_source_name,
    make_source,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PMDATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pmdata"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


@pytest.fixture
def pmdata_like(tmp_path: Path) -> Path:
    write(tmp_path / "pm" / "p01" / "pmsys" / "wellness.csv",
          "effective_time_frame,fatigue,mood,readiness,sleep_duration_h,sleep_quality,"
          "soreness,soreness_area,stress\n2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3\n")
    return tmp_path / "pm"


@pytest.mark.parametrize(
    ("make_path", "expected"),
    [
        (lambda t: "postgresql+psycopg2://postgres@127.0.0.1:5432/test", "postgres"),
        (lambda t: "postgres://u:pw@db.example/app", "postgres"),
        (lambda t: str(FIXTURES / "intervals"), "intervals"),
        (lambda t: str(FIXTURES / "intervals" / "i1001_wellness.csv"), "intervals"),
        (lambda t: str(write(t / "x.csv", "\ufeffdate,restingHR,hrv,Custom\n2024-01-01,50,,\n")),
         "intervals"),
        (lambda t: str(write(t / "c.csv", "athlete_id,date,tss\na,2024-01-01,1\n")),
         "canonical"),
        (lambda t: str(write(t / "f" / "c.csv", "athlete_id,date,tss\na,2024-01-01,1\n").parent),
         "canonical"),
    ],
)
def test_detects(tmp_path: Path, make_path, expected: str) -> None:  # type: ignore[no-untyped-def]
    assert detect_source_name(make_path(tmp_path)) == expected


def test_detects_pmdata_root_and_participant(pmdata_like: Path) -> None:
    assert detect_source_name(str(pmdata_like)) == "pmdata"
    assert detect_source_name(str(pmdata_like / "p01")) == "pmdata"


@pytest.mark.skipif(not PMDATA.is_dir(), reason=f"PMData not found at {PMDATA}")
def test_detects_the_shipped_pmdata() -> None:
    assert detect_source_name(str(PMDATA)) == "pmdata"


def test_detects_parquet(tmp_path: Path) -> None:
    f = tmp_path / "rows.parquet"
    pd.DataFrame({"athlete_id": ["a"], "date": [pd.Timestamp("2024-01-01")]}).to_parquet(f)
    assert detect_source_name(str(f)) == "canonical"
    assert detect_source_name(str(tmp_path)) == "canonical"


def test_a_mapping_means_generic_csv_even_for_an_intervals_header() -> None:
    path = str(FIXTURES / "intervals" / "i1001_wellness.csv")
    assert detect_source_name(path, mapping="m.yaml") == "generic_csv"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("Rider;Recorded at;RMSSD\nanna;2024-01-01;50\n", r"header \(Rider, Recorded at"),
        ("date,weight\n2024-01-01,70\n", "Give a mapping file"),
    ],
)
def test_unknown_csv_header_says_what_it_saw(tmp_path: Path, content: str, message: str) -> None:
    f = write(tmp_path / "odd.csv", content)
    with pytest.raises(SourceDetectionError, match=message):
        detect_source_name(str(f))


def test_mixed_or_empty_folders_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceDetectionError, match="no pXX/pmsys"):
        detect_source_name(str(tmp_path))
    write(tmp_path / "a.csv", "athlete_id,date\na,2024-01-01\n")
    write(tmp_path / "b.csv", "date,restingHR\n2024-01-01,50\n")
    with pytest.raises(SourceDetectionError, match="a.csv=canonical, b.csv=intervals"):
        detect_source_name(str(tmp_path))


def test_other_urls_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(SourceDetectionError, match="only PostgreSQL"):
        detect_source_name("mysql://user:pw@host/db")
    with pytest.raises(FileNotFoundError):
        detect_source_name(str(tmp_path / "missing.csv"))
    with pytest.raises(SourceDetectionError, match="expected a folder"):
        detect_source_name(str(write(tmp_path / "notes.json", "{}")))


def test_make_source_builds_each_kind(tmp_path: Path, pmdata_like: Path) -> None:
    mapping = FIXTURES / "generic_csv" / "mapping.yaml"
    cases = [
        (SourceSettings(path=str(FIXTURES / "intervals")), IntervalsSource),
        (SourceSettings(path=str(pmdata_like)), PMDataSource),
        (SourceSettings(path=str(FIXTURES / "generic_csv" / "daily_export.csv"),
                        mapping=mapping), GenericCsvSource),
        (SourceSettings(name="generic_csv", mapping=mapping), GenericCsvSource),
        (SourceSettings(mapping=mapping), GenericCsvSource),  # auto, files from the mapping
        (SourceSettings(path=str(write(tmp_path / "c.csv", "athlete_id,date\na,2024-01-01\n"))),
         CanonicalFileSource),
        (SourceSettings(path="postgresql://u@h/db", table="daily"), PostgresSource),
        (SourceSettings(name="intervals", path=str(FIXTURES / "intervals")), IntervalsSource),
    ]
    for cfg, kind in cases:
        source = make_source(cfg)
        assert isinstance(source, kind), cfg
        assert source.name == {IntervalsSource: "intervals", PMDataSource: "pmdata",
                               GenericCsvSource: "generic_csv", CanonicalFileSource: "canonical",
                               PostgresSource: "postgres"}[kind]
    # Built sources actually load (intervals and generic fixtures, tiny PMData).
    assert len(make_source(cases[0][0]).load().frame) == 300
    assert len(make_source(cases[2][0]).load().frame) == 289
    assert len(make_source(cases[1][0]).load().frame) == 1


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (SourceSettings(), "source.path is not set"),
        (SourceSettings(name="postgres", path="/data/x.csv", table="t"), "SQLAlchemy URL"),
        (SourceSettings(name="postgres", path="postgresql://u@h/db"), "exactly one"),
        (SourceSettings(name="generic_csv", path="/data/x.csv"), "source.mapping"),
        (SourceSettings(name="intervals", path="/data", table="t"), "only apply to the postgres"),
        (SourceSettings(name="pmdata", path="/data", mapping=Path("m.yaml")),
         "only applies to generic_csv"),
    ],
)
def test_make_source_rejects_settings_that_do_not_fit(cfg: SourceSettings, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_source(cfg)
