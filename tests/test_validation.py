"""Data tests: the Great Expectations suites run against good and deliberately broken frames.

Each broken frame damages one athlete in one way; the test checks that exactly that
athlete is quarantined, that the report names the column, the rule and an example row,
and that no row of anyone else is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from veloready_pipeline.schema import CANONICAL_COLUMNS, COLUMNS_BY_NAME, REQUIRED_COLUMNS
from veloready_pipeline.sources.base import ParseIssue
from veloready_pipeline.sources.canonical import CanonicalFileSource
from veloready_pipeline.validation import (
    AthleteReport,
    ValidationOutcome,
    build_athlete_suite,
    build_suite,
    validate_frame,
    write_quarantine_reports,
)

ATHLETES = ("a1", "a2", "a3")
DAYS = 40
START = pd.Timestamp("2026-01-01")


def make_frame(athletes: tuple[str, ...] = ATHLETES, days: int = DAYS, seed: int = 0
               ) -> pd.DataFrame:
    """A small, valid canonical frame with the source helper columns."""
    rng = np.random.default_rng(seed)
    n = len(athletes) * days
    frame = pd.DataFrame({
        "athlete_id": pd.array(np.repeat(athletes, days), dtype="string"),
        "date": np.tile(pd.date_range(START, periods=days).to_numpy(), len(athletes)),
        "hrv_ms": rng.normal(65, 12, n).clip(20, 150),
        "resting_hr": rng.normal(50, 4, n),
        "sleep_score": rng.uniform(55, 95, n),
        "sleep_hours": rng.uniform(5, 9, n),
        "tss": rng.uniform(0, 180, n),
        "recovery_score": rng.uniform(20, 99, n),
        "alcohol": rng.integers(0, 2, n).astype(float),
    })
    frame["_file"] = "daily.csv"
    frame["_line"] = np.arange(n) + 2
    return frame


def rows_of(frame: pd.DataFrame, athlete: str) -> pd.Index:
    return frame.index[frame["athlete_id"] == athlete]


def assert_nothing_lost(outcome: ValidationOutcome, frame: pd.DataFrame) -> None:
    quarantined_rows = int(frame["athlete_id"].isin(list(outcome.quarantined)).sum())
    unattributed_rows = int(frame["athlete_id"].isna().sum())
    assert len(outcome.clean) + quarantined_rows + unattributed_rows == len(frame)
    for aid in set(frame["athlete_id"].dropna()) - set(outcome.quarantined):
        assert (outcome.clean["athlete_id"] == aid).sum() == (frame["athlete_id"] == aid).sum()


def failure(report: AthleteReport, column: str, rule: str) -> dict:
    hits = [f for f in report.failures if f["column"] == column and f["rule"] == rule]
    assert hits, f"no {rule} failure on {column}: {report.failures}"
    return hits[0]


# --------------------------------------------------------------------------- good data


def test_good_frame_passes_and_keeps_every_row() -> None:
    frame = make_frame()
    outcome = validate_frame(frame)
    assert outcome.quarantined == {}
    assert outcome.n_athletes == len(ATHLETES)
    assert len(outcome.clean) == len(frame)
    assert outcome.warnings == {}
    assert [c for c in outcome.clean.columns if c.startswith("_")] == []
    expected = [c.name for c in CANONICAL_COLUMNS if c.name in frame.columns]
    assert list(outcome.clean.columns) == expected
    pd.testing.assert_series_equal(
        outcome.clean["hrv_ms"], frame["hrv_ms"], check_names=False
    )
    summary = outcome.summary()
    assert summary["n_quarantined"] == 0 and summary["n_rows_clean"] == len(frame)


def test_validation_writes_nothing_to_cwd_or_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, home = tmp_path / "cwd", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    frame = make_frame()
    frame.loc[0, "hrv_ms"] = 900.0
    outcome = validate_frame(frame)
    assert list(outcome.quarantined) == ["a1"]
    assert list(work.iterdir()) == [] and list(home.iterdir()) == []


# --------------------------------------------------------------------------- broken data


def break_hrv(frame: pd.DataFrame, athlete: str = "a2") -> pd.DataFrame:
    frame.loc[rows_of(frame, athlete)[5], "hrv_ms"] = 900.0
    return frame


def break_resting_hr(frame: pd.DataFrame, athlete: str = "a2") -> pd.DataFrame:
    frame.loc[rows_of(frame, athlete)[7], "resting_hr"] = 12.0
    return frame


def duplicate_date(frame: pd.DataFrame, athlete: str = "a2") -> pd.DataFrame:
    dup = frame.loc[[rows_of(frame, athlete)[3]]].assign(_line=999)
    return pd.concat([frame, dup], ignore_index=True)


def null_date(frame: pd.DataFrame, athlete: str = "a2") -> pd.DataFrame:
    frame.loc[rows_of(frame, athlete)[5], "date"] = pd.NaT
    return frame


def long_gap(frame: pd.DataFrame, athlete: str = "a2") -> pd.DataFrame:
    return frame.drop(index=rows_of(frame, athlete)[10:30]).reset_index(drop=True)


def many_missing(frame: pd.DataFrame, athlete: str = "a2") -> pd.DataFrame:
    frame.loc[rows_of(frame, athlete)[:30], "sleep_score"] = np.nan
    return frame


def hand_typed_bad_value(frame: pd.DataFrame, athlete: str = "a2") -> pd.DataFrame:
    frame = frame.astype({"hrv_ms": object})
    frame.loc[rows_of(frame, athlete)[4], "hrv_ms"] = "sixty"
    return frame


Breaker = Callable[[pd.DataFrame, str], pd.DataFrame]
BROKEN: dict[str, tuple[Breaker, str, str, object]] = {
    # athlete / case: (break, column, rule, example value)
    "impossible_hrv": (break_hrv, "hrv_ms", "expect_column_values_to_be_between", 900.0),
    "impossible_rhr": (break_resting_hr, "resting_hr", "expect_column_values_to_be_between",
                       12.0),
    "duplicated_date": (duplicate_date, "date", "expect_compound_columns_to_be_unique", None),
    "null_date": (null_date, "date", "expect_column_values_to_not_be_null", None),
    "long_gap": (long_gap, "date", "max_gap_days", None),
    "too_many_missing": (many_missing, "sleep_score", "max_missing_rate", None),
    "bad_type_in_memory": (hand_typed_bad_value, "hrv_ms", "type", None),
}
GOOD = ("ok1", "ok2")


@pytest.fixture(scope="module")
def corrupted() -> tuple[pd.DataFrame, ValidationOutcome]:
    """One frame, one athlete per kind of damage plus two good ones, validated once."""
    frame = make_frame((*GOOD, *BROKEN))
    for athlete, (breaker, *_) in BROKEN.items():
        frame = breaker(frame, athlete)
    return frame, validate_frame(frame)


def test_corrupted_input_quarantines_only_the_affected_athletes(
    corrupted: tuple[pd.DataFrame, ValidationOutcome],
) -> None:
    frame, outcome = corrupted
    assert sorted(outcome.quarantined) == sorted(BROKEN)
    assert outcome.n_athletes == len(GOOD) + len(BROKEN)
    assert_nothing_lost(outcome, frame)
    assert sorted(outcome.clean["athlete_id"].unique()) == list(GOOD)
    assert outcome.summary()["n_quarantined"] == len(BROKEN)


@pytest.mark.parametrize("athlete", list(BROKEN))
def test_report_names_column_rule_and_example(
    athlete: str, corrupted: tuple[pd.DataFrame, ValidationOutcome]
) -> None:
    frame, outcome = corrupted
    _, column, rule, value = BROKEN[athlete]
    report = outcome.quarantined[athlete]
    assert [(f["column"], f["rule"]) for f in report.failures] == [(column, rule)]
    found = report.failures[0]
    assert found["unexpected_count"] >= 1
    assert found["examples"], "a report must show example rows"
    example = found["examples"][0]
    assert example["file"] == "daily.csv" and isinstance(example["line"], int)
    if value is not None:
        bad_row = frame[frame[column] == value].iloc[0]
        assert bad_row["athlete_id"] == athlete
        assert example["value"] == value
        assert example["date"] == f"{bad_row['date']:%Y-%m-%d}"
        assert example["line"] == bad_row["_line"]
    assert outcome.summary()["quarantined"][athlete] == f"{column}: {rule} - {found['detail']}"
    if rule == "type":
        assert example["message"] == "value 'sixty' is not a valid hrv_ms"
    md = report.to_markdown()
    assert f"athlete `{athlete}`" in md and f"column `{column}`, rule `{rule}`" in md


def test_one_broken_athlete_among_good_ones() -> None:
    frame = break_hrv(make_frame())
    outcome = validate_frame(frame)
    assert list(outcome.quarantined) == ["a2"]
    assert_nothing_lost(outcome, frame)


def test_impossible_hrv_report_names_date_and_bounds() -> None:
    frame = break_hrv(make_frame())
    report = validate_frame(frame).quarantined["a2"]
    f = failure(report, "hrv_ms", "expect_column_values_to_be_between")
    hrv = COLUMNS_BY_NAME["hrv_ms"]
    assert f["examples"] == [
        {"date": f"{START + pd.Timedelta(days=5):%Y-%m-%d}", "value": 900.0,
         "file": "daily.csv", "line": int(frame.loc[rows_of(frame, "a2")[5], "_line"])}
    ]
    assert f"{hrv.min:g} to {hrv.max:g} ms" in f["detail"]
    assert "min_value=5" in f["expectation"] and "max_value=250" in f["expectation"]
    assert len(report.failures) == 1


def test_duplicated_dates_report_both_rows() -> None:
    frame = duplicate_date(make_frame())
    f = failure(validate_frame(frame).quarantined["a2"], "date",
                "expect_compound_columns_to_be_unique")
    assert f["unexpected_count"] == 2
    assert sorted(e["line"] for e in f["examples"]) == sorted(
        [int(frame.loc[rows_of(frame, "a2")[3], "_line"]), 999]
    )
    assert "1 date(s) appear more than once" in f["detail"]


def test_long_gap_report_shows_both_sides() -> None:
    frame = long_gap(make_frame())
    f = failure(validate_frame(frame, max_gap_days=14).quarantined["a2"], "date",
                "max_gap_days")
    assert [e["date"] for e in f["examples"]] == ["2026-01-10", "2026-01-31"]
    assert "20 consecutive days without data" in f["detail"]


def test_gap_at_or_below_limit_is_a_warning() -> None:
    frame = long_gap(make_frame())
    outcome = validate_frame(frame, max_gap_days=20)
    assert outcome.quarantined == {}
    assert outcome.warnings["a2"] == [
        "20 day(s) without data in 1 gap(s); longest 20 day(s) between 2026-01-10 and 2026-01-31"
    ]
    assert validate_frame(frame, max_gap_days=19).quarantined.keys() == {"a2"}


def test_missing_rate_limit_comes_from_schema_and_can_be_overridden() -> None:
    frame = many_missing(make_frame())  # 30 of 40 = 75 % missing
    assert validate_frame(frame).quarantined.keys() == {"a2"}
    assert validate_frame(frame, max_missing_rates={"sleep_score": 0.8}).quarantined == {}
    frame.loc[rows_of(frame, "a3")[:2], "tss"] = np.nan  # 5 %
    tight = validate_frame(frame, max_missing_rates={"sleep_score": 0.8, "tss": 0.0})
    assert tight.quarantined.keys() == {"a3"}
    f = failure(tight.quarantined["a3"], "tss", "max_missing_rate")
    assert f["unexpected_count"] == 2 and "5% of tss values are missing" in f["detail"]


@pytest.mark.parametrize("bad", [{"no_such_column": 0.5}, {"tss": 1.5}, {"tss": -0.1}])
def test_bad_missing_rate_override_names_the_column(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        validate_frame(make_frame(), max_missing_rates=bad)


def test_absent_optional_sensor_is_a_warning_but_absent_required_one_quarantines() -> None:
    frame = make_frame()
    frame.loc[rows_of(frame, "a1"), "hrv_ms"] = np.nan  # no HRV strap: normal
    frame.loc[rows_of(frame, "a2"), "resting_hr"] = np.nan  # no RHR either: normal
    frame.loc[rows_of(frame, "a2")[:1], "resting_hr"] = 50.0  # one stray reading
    frame.loc[rows_of(frame, "a3"), "recovery_score"] = np.nan  # the target: required
    outcome = validate_frame(frame)
    assert outcome.quarantined.keys() == {"a3"}
    assert any("hrv_ms present on 0 of" in w for w in outcome.warnings["a1"])
    assert any("resting_hr present on 1 of" in w for w in outcome.warnings["a2"])
    assert failure(outcome.quarantined["a3"], "recovery_score", "max_missing_rate")
    assert_nothing_lost(outcome, frame)


@pytest.mark.parametrize("column", REQUIRED_COLUMNS)
def test_missing_required_column_is_a_clear_error(column: str) -> None:
    frame = make_frame().drop(columns=[column])
    with pytest.raises(ValueError, match=f"required column.*{column}"):
        validate_frame(frame)


def test_empty_frame_and_bad_gap_limit() -> None:
    outcome = validate_frame(make_frame().iloc[:0])
    assert outcome.n_athletes == 0 and outcome.quarantined == {} and outcome.clean.empty
    with pytest.raises(ValueError, match="max_gap_days"):
        validate_frame(make_frame(), max_gap_days=-1)


def test_missing_optional_column_is_fine() -> None:
    outcome = validate_frame(make_frame().drop(columns=["hrv_ms", "sleep_hours"]))
    assert outcome.quarantined == {} and "hrv_ms" not in outcome.clean


# --------------------------------------------------------------------------- via a source


def test_bad_type_in_csv_is_reported_with_file_and_line(tmp_path: Path) -> None:
    frame = make_frame().drop(columns=["_file", "_line"])
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    frame = frame.astype({"hrv_ms": object})
    bad_row = int(rows_of(frame, "a2")[6])
    frame.loc[bad_row, "hrv_ms"] = "n/a-ms"
    path = tmp_path / "daily.csv"
    frame.to_csv(path, index=False)

    loaded = CanonicalFileSource(path).load()
    assert len(loaded.issues) == 1
    outcome = validate_frame(loaded.frame, loaded.issues)

    assert list(outcome.quarantined) == ["a2"]
    report = outcome.quarantined["a2"]
    assert len(report.failures) == 1, "the parse issue and the coerce note are one problem"
    f = failure(report, "hrv_ms", "type")
    assert f["examples"] == [{
        "date": f"{START + pd.Timedelta(days=6):%Y-%m-%d}", "value": None, "file": str(path),
        "line": bad_row + 2, "message": "value 'n/a-ms' is not a valid hrv_ms",
    }]
    md = report.to_markdown()
    assert str(path) in md and f"| {bad_row + 2} |" in md and "n/a-ms" in md
    assert_nothing_lost(outcome, loaded.frame)


def test_parse_issues_quarantine_their_athlete_and_unattributed_ones_are_listed() -> None:
    frame = make_frame()
    frame.loc[len(frame) - 1, "athlete_id"] = pd.NA  # a row nobody owns
    issues = [
        ParseIssue("a3", "a3.csv", 17, "sleep_score", "line has 3 fields, expected 9"),
        ParseIssue("ghost", "ghost.csv", None, None, "file is not UTF-8"),
        ParseIssue(None, "mixed.csv", 4, None, "no athlete column on this line"),
    ]
    outcome = validate_frame(frame, issues)
    assert outcome.quarantined.keys() == {"a3", "ghost"}
    f = failure(outcome.quarantined["a3"], "sleep_score", "parse")
    assert f["examples"][0]["file"] == "a3.csv" and f["examples"][0]["line"] == 17
    assert "line has 3 fields" in f["detail"]
    assert outcome.quarantined["ghost"].n_rows == 0
    assert outcome.n_athletes == 4
    summary = outcome.summary()
    assert summary["n_unattributed"] == 2
    assert {(u["file"], u["rule"]) for u in summary["unattributed"]} == {
        ("mixed.csv", "parse"), ("daily.csv", "expect_column_values_to_not_be_null")}
    assert_nothing_lost(outcome, frame)


@dataclass(frozen=True)
class NotedIssue(ParseIssue):
    """A ParseIssue with the optional ``severity`` that validation honours."""

    severity: str = "error"


def test_source_notes_that_are_not_errors_become_warnings() -> None:
    frame = make_frame()
    issues = [
        NotedIssue("a1", "wellness.csv", 14, None, "duplicate report superseded by line 15",
                   severity="note"),
        *(NotedIssue("a1", "sleep.json", k, None, "nap ignored", severity="note")
          for k in range(6)),
        NotedIssue("a2", "wellness.csv", 30, None, "row has 2 fields, expected 8"),
    ]
    outcome = validate_frame(frame, issues)
    assert outcome.quarantined.keys() == {"a2"}
    notes = outcome.warnings["a1"]
    assert notes[0] == ("source note (wellness.csv:14): duplicate report superseded by line 15")
    assert len(notes) == 6 and notes[-1] == "... and 2 more source note(s)"


# --------------------------------------------------------------------------- the suites


def test_suite_is_generated_from_the_schema() -> None:
    suite = build_suite()
    by_rule: dict[str, set[str]] = {}
    for exp in suite.expectations:
        by_rule.setdefault(exp.meta["veloready_rule"], set()).add(exp.meta["veloready_column"])
    ranged = {c.name for c in CANONICAL_COLUMNS if c.min is not None}
    assert by_rule["expect_column_values_to_be_between"] == ranged
    assert by_rule["expect_column_to_exist"] == set(REQUIRED_COLUMNS)
    assert by_rule["expect_column_values_to_not_be_null"] == {"athlete_id", "date"}
    assert by_rule["expect_compound_columns_to_be_unique"] == {"date"}
    between = {e.column: (e.min_value, e.max_value) for e in suite.expectations
               if e.expectation_type == "expect_column_values_to_be_between"}
    assert between["hrv_ms"] == (5, 250)
    only = build_suite(["athlete_id", "date", "tss"])
    cols = {e.meta["veloready_column"] for e in only.expectations
            if e.meta["veloready_rule"] == "expect_column_values_to_be_between"}
    assert cols == {"tss"}


def test_suite_runs_as_plain_great_expectations() -> None:
    """The suite is an ordinary GX suite: usable without this module's wrapper."""
    import great_expectations as gx

    good = make_frame().drop(columns=["_file", "_line"])
    bad = break_hrv(good.copy())
    context = gx.get_context(mode="ephemeral")
    batch_def = (context.data_sources.add_pandas("t").add_dataframe_asset("rows")
                 .add_batch_definition_whole_dataframe("all"))
    suite = build_suite(good.columns)
    assert batch_def.get_batch(batch_parameters={"dataframe": good}).validate(suite).success
    result = batch_def.get_batch(batch_parameters={"dataframe": bad}).validate(suite)
    failed = [(r.expectation_config.type, r.expectation_config.kwargs.get("column"))
              for r in result.results if not r.success]
    assert failed == [("expect_column_values_to_be_between", "hrv_ms")]


def test_athlete_suite_checks_rates_and_gaps() -> None:
    suite = build_athlete_suite({"tss": 0.5}, max_gap_days=14)
    kinds = {(e.column, e.max_value) for e in suite.expectations}
    assert kinds == {("tss_missing_rate", 0.5), ("longest_gap_days", 14)}


# --------------------------------------------------------------------------- reports


def test_markdown_report_names_athlete_column_rule_and_rows() -> None:
    frame = make_frame()
    frame.loc[rows_of(frame, "a1")[2], "hrv_ms"] = 900.0
    frame.loc[rows_of(frame, "a1")[3], "sleep_score"] = 140.0
    md = validate_frame(frame).quarantined["a1"].to_markdown()
    assert md.startswith("# Quarantine report: athlete `a1`")
    assert "column `hrv_ms`, rule `expect_column_values_to_be_between`" in md
    assert "column `sleep_score`, rule `expect_column_values_to_be_between`" in md
    assert "| 2026-01-03 | 900 | daily.csv |" in md
    assert "| 2026-01-04 | 140 | daily.csv |" in md


def test_write_quarantine_reports(tmp_path: Path) -> None:
    frame = break_hrv(make_frame())
    frame.loc[rows_of(frame, "a3"), "athlete_id"] = "team/a3"
    frame.loc[rows_of(frame, "team/a3")[0], "tss"] = -5.0
    outcome = validate_frame(frame)
    paths = write_quarantine_reports(outcome, tmp_path / "quarantine")
    names = sorted(p.name for p in paths)
    odd = [n for n in names if n.startswith("team-a3--")]  # ids.athlete_key("team/a3")
    assert "a2.md" in names and "a2.json" in names and len(odd) == 2 and "index.json" in names
    assert all(p.exists() for p in paths)
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == names  # no temp files
    index = json.loads((tmp_path / "quarantine" / "index.json").read_text())
    assert set(index["reports"]) == {"a2", "team/a3"}
    assert index["summary"]["n_quarantined"] == 2
    report = json.loads((tmp_path / "quarantine" / "a2.json").read_text())
    assert report["failures"][0]["column"] == "hrv_ms"
    assert report["failures"][0]["examples"][0]["value"] == 900.0


# --------------------------------------------------------------------------- scale


@pytest.mark.slow
def test_a_full_week_validates_in_seconds() -> None:
    """1,000 athletes x 180 days through both suites once; the broken few are found."""
    athletes = tuple(f"ath{i:04d}" for i in range(1000))
    frame = make_frame(athletes, days=180, seed=3)
    frame.loc[rows_of(frame, "ath0007")[50], "hrv_ms"] = 900.0
    frame.loc[rows_of(frame, "ath0500")[:120], "sleep_score"] = np.nan
    frame = duplicate_date(frame.assign(athlete_id=frame["athlete_id"].replace(
        {"ath0999": "a2"})))
    start = time.perf_counter()
    outcome = validate_frame(frame)
    elapsed = time.perf_counter() - start
    assert outcome.quarantined.keys() == {"ath0007", "ath0500", "a2"}
    assert_nothing_lost(outcome, frame)
    assert elapsed < 60, f"validation took {elapsed:.1f} s"
