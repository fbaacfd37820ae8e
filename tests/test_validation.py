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
    TrainingWindow,
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
    frame.loc[rows_of(frame, "a1")[:10], "hrv_ms"] = 900.0
    outcome = validate_frame(frame)
    assert list(outcome.quarantined) == ["a1"]
    assert list(work.iterdir()) == [] and list(home.iterdir()) == []


# --------------------------------------------------------------------------- broken rows


def break_hrv(frame: pd.DataFrame, athlete: str = "a2", n: int = 1) -> pd.DataFrame:
    frame.loc[rows_of(frame, athlete)[5:5 + n], "hrv_ms"] = 900.0
    return frame


def break_resting_hr(frame: pd.DataFrame, athlete: str = "a2", n: int = 1) -> pd.DataFrame:
    frame.loc[rows_of(frame, athlete)[7:7 + n], "resting_hr"] = 12.0
    return frame


def duplicate_date(frame: pd.DataFrame, athlete: str = "a2", n: int = 1) -> pd.DataFrame:
    dup = frame.loc[rows_of(frame, athlete)[3:3 + n]].assign(_line=999)
    return pd.concat([frame, dup], ignore_index=True)


def null_date(frame: pd.DataFrame, athlete: str = "a2", n: int = 1) -> pd.DataFrame:
    frame.loc[rows_of(frame, athlete)[5:5 + n], "date"] = pd.NaT
    return frame


def hand_typed_bad_value(frame: pd.DataFrame, athlete: str = "a2", n: int = 1) -> pd.DataFrame:
    frame = frame.astype({"hrv_ms": object})
    frame.loc[rows_of(frame, athlete)[4:4 + n], "hrv_ms"] = "sixty"
    return frame


Breaker = Callable[..., pd.DataFrame]
# case: (break, column, rule, example value, what happens to the row)
ROW_RULES: dict[str, tuple[Breaker, str, str, object, str]] = {
    "impossible_hrv": (break_hrv, "hrv_ms", "expect_column_values_to_be_between", 900.0,
                       "masked"),
    "impossible_rhr": (break_resting_hr, "resting_hr", "expect_column_values_to_be_between",
                       12.0, "masked"),
    "duplicated_date": (duplicate_date, "date", "expect_compound_columns_to_be_unique", None,
                        "dropped"),
    "null_date": (null_date, "date", "expect_column_values_to_not_be_null", None, "dropped"),
    "bad_type_in_memory": (hand_typed_bad_value, "hrv_ms", "type", None, "masked"),
}
GOOD = ("ok1", "ok2")


@pytest.fixture(scope="module")
def one_bad_row() -> tuple[pd.DataFrame, ValidationOutcome]:
    """One athlete per row rule with a single bad row, plus two good ones, validated once."""
    frame = make_frame((*GOOD, *ROW_RULES))
    for athlete, (breaker, *_) in ROW_RULES.items():
        frame = breaker(frame, athlete)
    return frame, validate_frame(frame, min_history_days=30)


def test_a_bad_row_is_dropped_or_masked_and_the_athlete_trains(
    one_bad_row: tuple[pd.DataFrame, ValidationOutcome],
) -> None:
    frame, outcome = one_bad_row
    assert outcome.quarantined == {}
    assert sorted(outcome.clean["athlete_id"].unique()) == sorted((*GOOD, *ROW_RULES))
    counts = outcome.clean.groupby("athlete_id").size()
    assert counts["ok1"] == DAYS and counts["impossible_hrv"] == DAYS
    assert counts["null_date"] == DAYS - 1
    assert counts["duplicated_date"] == DAYS - 1  # both copies of the doubled day
    assert outcome.clean["hrv_ms"].max() <= 250
    assert outcome.clean.loc[outcome.clean["athlete_id"] == "impossible_rhr",
                             "resting_hr"].isna().sum() == 1
    assert outcome.note_counts()["masked"] == 3 and outcome.note_counts()["dropped"] == 3


@pytest.mark.parametrize("athlete", list(ROW_RULES))
def test_data_notes_list_each_dropped_or_masked_row(
    athlete: str, one_bad_row: tuple[pd.DataFrame, ValidationOutcome]
) -> None:
    frame, outcome = one_bad_row
    _, column, rule, value, action = ROW_RULES[athlete]
    [note] = [n for n in outcome.data_notes[athlete] if n["kind"] in ("masked", "dropped")]
    assert (note["column"], note["rule"], note["action"]) == (column, rule, action)
    assert note["count"] == len(note["rows"]) == (2 if rule.startswith("expect_compound") else 1)
    row = note["rows"][0]
    assert row["file"] == "daily.csv" and isinstance(row["line"], int)
    if value is not None:
        bad_row = frame[frame[column] == value].iloc[0]
        assert row["value"] == value and row["line"] == bad_row["_line"]
        assert row["date"] == f"{bad_row['date']:%Y-%m-%d}"
    if rule == "type":
        assert row["message"] == "value 'sixty' is not a valid hrv_ms"


@pytest.fixture(scope="module")
def many_bad_rows() -> tuple[pd.DataFrame, ValidationOutcome]:
    """The same breakages on 4 of 40 rows (10 %): every one passes its 5 % tolerance."""
    frame = make_frame((*GOOD, *ROW_RULES))
    for athlete, (breaker, *_) in ROW_RULES.items():
        frame = breaker(frame, athlete, n=4)
    return frame, validate_frame(frame)


def test_over_tolerance_quarantines_only_the_affected_athletes(
    many_bad_rows: tuple[pd.DataFrame, ValidationOutcome],
) -> None:
    frame, outcome = many_bad_rows
    assert sorted(outcome.quarantined) == sorted(ROW_RULES)
    assert outcome.n_athletes == len(GOOD) + len(ROW_RULES)
    assert sorted(outcome.clean["athlete_id"].unique()) == list(GOOD)
    assert len(outcome.clean) == len(GOOD) * DAYS
    assert outcome.summary()["n_quarantined"] == len(ROW_RULES)


@pytest.mark.parametrize("athlete", list(ROW_RULES))
def test_report_names_column_rule_share_and_example(
    athlete: str, many_bad_rows: tuple[pd.DataFrame, ValidationOutcome]
) -> None:
    frame, outcome = many_bad_rows
    _, column, rule, value, _ = ROW_RULES[athlete]
    report = outcome.quarantined[athlete]
    assert [(f["column"], f["rule"]) for f in report.failures] == [(column, rule)]
    found = report.failures[0]
    assert found["unexpected_count"] >= 4 and found["examples"]
    assert "tolerance 5% (validation.row_tolerance." in found["detail"]
    example = found["examples"][0]
    assert example["file"] == "daily.csv" and isinstance(example["line"], int)
    if value is not None:
        bad_row = frame[frame[column] == value].iloc[0]
        assert bad_row["athlete_id"] == athlete
        assert example["value"] == value and example["line"] == bad_row["_line"]
        assert example["date"] == f"{bad_row['date']:%Y-%m-%d}"
    assert outcome.summary()["quarantined"][athlete] == f"{column}: {rule} - {found['detail']}"
    md = report.to_markdown()
    assert f"athlete `{athlete}`" in md and f"column `{column}`, rule `{rule}`" in md


@pytest.mark.parametrize("athlete", list(ROW_RULES))
def test_tolerance_boundary_per_rule(athlete: str) -> None:
    """Done-when of issue 16: under the tolerance trains, over it is quarantined.

    200 days, tolerance 2 %: 3 bad rows (1.5 %) train with >= min_history_days clean
    days, 6 bad rows (3 %) quarantine. Duplicates count both copies of a day.
    """
    breaker, column, rule, _, _ = ROW_RULES[athlete]
    key = {"expect_column_values_to_be_between": "range", "type": "type",
           "expect_compound_columns_to_be_unique": "duplicate_date",
           "expect_column_values_to_not_be_null": "missing_date"}[rule]
    n_under, n_over = (1, 3) if key == "duplicate_date" else (3, 6)
    for n, quarantined in ((n_under, False), (n_over, True)):
        frame = breaker(make_frame(("x",), days=200), "x", n=n)
        outcome = validate_frame(frame, tolerances={key: 0.02}, min_history_days=90)
        assert ("x" in outcome.quarantined) is quarantined, (n, outcome.summary())
        if not quarantined:
            assert len(outcome.clean) >= 90
            listed = [r for note in outcome.data_notes["x"] for r in note.get("rows", [])]
            assert len(listed) == (2 * n if key == "duplicate_date" else n)


def test_one_broken_athlete_among_good_ones() -> None:
    frame = break_hrv(make_frame(), n=10)
    outcome = validate_frame(frame)
    assert list(outcome.quarantined) == ["a2"]
    assert (outcome.clean.groupby("athlete_id").size() == DAYS).all()


def test_impossible_hrv_report_names_date_and_bounds() -> None:
    frame = break_hrv(make_frame(), n=3)
    report = validate_frame(frame).quarantined["a2"]
    f = failure(report, "hrv_ms", "expect_column_values_to_be_between")
    hrv = COLUMNS_BY_NAME["hrv_ms"]
    assert f["examples"][0] == {
        "date": f"{START + pd.Timedelta(days=5):%Y-%m-%d}", "value": 900.0,
        "file": "daily.csv", "line": int(frame.loc[rows_of(frame, "a2")[5], "_line"])}
    assert f"{hrv.min:g} to {hrv.max:g} ms" in f["detail"]
    assert "7.5% of 40 readings" in f["detail"]
    assert "min_value=5" in f["expectation"] and "max_value=250" in f["expectation"]
    assert "max_value=0.05" in f["tolerance_expectation"]
    assert len(report.failures) == 1


def test_quarantine_report_also_lists_row_problems_within_tolerance() -> None:
    frame = hand_typed_bad_value(break_hrv(make_frame(), n=10), n=1)
    report = validate_frame(frame).quarantined["a2"]
    assert [(f["column"], f["rule"], bool(f.get("within_tolerance")))
            for f in report.failures] == [
        ("hrv_ms", "expect_column_values_to_be_between", False), ("hrv_ms", "type", True)]
    assert report.first_failure().startswith("hrv_ms: expect_column_values_to_be_between")
    assert "within it, so masked and reported" in report.failures[1]["detail"]


def test_duplicated_dates_drop_both_rows_and_name_them() -> None:
    frame = duplicate_date(make_frame())
    outcome = validate_frame(frame)
    [note] = [n for n in outcome.data_notes["a2"] if n["kind"] == "dropped"]
    assert sorted(r["line"] for r in note["rows"]) == sorted(
        [int(frame.loc[rows_of(frame, "a2")[3], "_line"]), 999])
    day = START + pd.Timedelta(days=3)
    a2 = outcome.clean[outcome.clean["athlete_id"] == "a2"]
    assert day not in set(a2["date"]) and len(a2) == DAYS - 1


# --------------------------------------------------------------------------- gaps, history


def long_gap(frame: pd.DataFrame, athlete: str = "a2") -> pd.DataFrame:
    return frame.drop(index=rows_of(frame, athlete)[10:30]).reset_index(drop=True)


def test_long_gap_cuts_the_history_and_quarantines_only_if_too_little_remains() -> None:
    frame = long_gap(make_frame())  # a2: 10 days, 20 empty days, 10 days
    outcome = validate_frame(frame, max_gap_days=14)
    assert outcome.quarantined == {}
    a2 = outcome.clean[outcome.clean["athlete_id"] == "a2"]
    assert len(a2) == 10 and a2["date"].min() == pd.Timestamp("2026-01-31")
    [cut] = [n for n in outcome.data_notes["a2"] if n["kind"] == "gap" and n["count"] == 10]
    assert "up to 2026-01-10 not used: 20 days without data until 2026-01-31" in cut["message"]

    strict = validate_frame(frame, max_gap_days=14, min_history_days=15)
    f = failure(strict.quarantined["a2"], "date", "max_gap_days")
    assert [e["date"] for e in f["examples"]] == ["2026-01-10", "2026-01-31"]
    assert "20 consecutive days without data" in f["detail"]
    assert "only 10 day(s) of data after it, fewer than min_history_days = 15" in f["detail"]
    assert strict.quarantined.keys() == {"a2"}


def test_gap_at_or_below_limit_is_a_warning_naming_it() -> None:
    frame = long_gap(make_frame())
    outcome = validate_frame(frame, max_gap_days=20, min_history_days=15)
    assert outcome.quarantined == {}
    assert outcome.warnings["a2"] == [
        "20 day(s) without data in 1 gap(s); longest 20 day(s) between 2026-01-10 and 2026-01-31"
    ]
    assert [n["kind"] for n in outcome.data_notes["a2"]] == ["gap"]
    assert validate_frame(frame, max_gap_days=19, min_history_days=15).quarantined.keys() == {
        "a2"}


def test_all_gaps_athlete_has_its_gaps_named() -> None:
    """Rows every 10th day (no two consecutive days): trained on nothing, but named."""
    frame = make_frame(("a1", "gappy"), days=120)
    frame = frame[(frame["athlete_id"] == "a1") | (frame.index % 10 == 0)]
    outcome = validate_frame(frame.reset_index(drop=True), min_history_days=30)
    assert outcome.quarantined == {}
    [note] = outcome.data_notes["gappy"]
    assert note["kind"] == "gap"
    assert note["message"] == ("99 day(s) without data in 11 gap(s); longest 9 day(s) between "
                               "2026-01-01 and 2026-01-11")
    sparse = make_frame(("gappy",), days=120)
    sparse = sparse[sparse.index % 20 == 0].reset_index(drop=True)  # 19-day gaps
    f = failure(validate_frame(sparse, min_history_days=30).quarantined["gappy"], "date",
                "max_gap_days")
    assert f["detail"] == (
        "19 consecutive days without data between 2026-03-22 and 2026-04-11 (at most 14 "
        "allowed): only 1 day(s) of data after it, fewer than min_history_days = 30")


def test_too_little_clean_history_after_drops_quarantines() -> None:
    frame = null_date(make_frame(("a1",), days=40), "a1", n=1)
    assert validate_frame(frame, min_history_days=39).quarantined == {}
    report = validate_frame(frame, min_history_days=40).quarantined["a1"]
    assert report.failures[0]["rule"] == "min_history_days"
    assert report.failures[0]["detail"] == (
        "only 39 clean day(s) remain in the training window after dropping 1 row(s), fewer "
        "than min_history_days = 40")
    assert report.failures[1]["within_tolerance"]
    # Nothing dropped: a short history is the trainer's business, not a quarantine.
    assert validate_frame(make_frame(("a1",), days=40), min_history_days=90).quarantined == {}


# --------------------------------------------------------------------------- missing rates


def test_required_target_missing_rate_counts_from_its_first_reading() -> None:
    frame = make_frame()
    a2 = rows_of(frame, "a2")
    frame.loc[a2[1::2], "recovery_score"] = np.nan  # every other day: 50 %... plus two
    frame.loc[a2[[2, 4]], "recovery_score"] = np.nan
    f = failure(validate_frame(frame).quarantined["a2"], "recovery_score", "max_missing_rate")
    assert f["unexpected_count"] == 22
    assert f["detail"] == ("55% of recovery_score values are missing (22 of 40 rows since its "
                           "first reading on 2026-01-01; at most 50% allowed)")
    assert validate_frame(frame, max_missing_rates={"recovery_score": 0.6}).quarantined == {}
    late = make_frame()
    late.loc[rows_of(late, "a3")[:30], "recovery_score"] = np.nan  # a late-starting target
    assert validate_frame(late).quarantined == {}


def test_sparse_optional_sensor_is_a_note_however_the_file_is_cut() -> None:
    frame = make_frame(days=400)
    a2 = rows_of(frame, "a2")
    frame.loc[a2, "sleep_score"] = np.nan
    frame.loc[a2[-100::3], "sleep_score"] = 80.0  # present on a third of the last 100 days
    for window in (None, TrainingWindow(max_history_days=100),
                   TrainingWindow(since=pd.Timestamp("2026-12-01"))):
        outcome = validate_frame(frame, window=window)
        assert outcome.quarantined == {}, window
        assert any("sleep_score" in n["message"] for n in outcome.data_notes["a2"]
                   if n["kind"] == "sensor"), window


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
    f = failure(outcome.quarantined["a3"], "recovery_score", "max_missing_rate")
    assert "none ever recorded" in f["detail"]


@pytest.mark.parametrize("bad", [{"no_such_column": 0.5}, {"tss": 1.5}, {"tss": -0.1}])
def test_bad_missing_rate_override_names_the_column(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        validate_frame(make_frame(), max_missing_rates=bad)


@pytest.mark.parametrize("bad", [{"no_such_rule": 0.5}, {"range": 1.5}])
def test_bad_tolerance_names_the_rule(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=f"row_tolerance.*{next(iter(bad))}"):
        validate_frame(make_frame(), tolerances=bad)


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


# --------------------------------------------------------------------------- future, window


def test_future_dates_beyond_the_tolerance_quarantine_that_athlete() -> None:
    frame = make_frame()  # 2026-01-01 .. 2026-02-09
    today = pd.Timestamp("2026-02-09")
    frame.loc[rows_of(frame, "a2")[-1], "date"] = pd.Timestamp("2036-02-09")
    frame.loc[rows_of(frame, "a3")[-1], "date"] = pd.Timestamp("2026-02-11")  # 2 days: ok
    outcome = validate_frame(frame, future_days=2, today=today)
    assert outcome.quarantined.keys() == {"a2"}
    f = failure(outcome.quarantined["a2"], "date", "future_date")
    assert f["detail"].startswith("1 row(s) dated after 2026-02-11 (2 day(s) past 2026-02-09)"
                                  "; the latest is 2036-02-09")
    assert f["examples"][0]["value"] == "2036-02-09" and f["examples"][0]["line"] == 81
    assert "max_value=2" in f["expectation"]
    assert "a3" in set(outcome.clean["athlete_id"])
    # The reference is as-of when that is later than today (a run dated ahead).
    later = validate_frame(frame, future_days=2, today=today,
                           window=TrainingWindow(as_of=pd.Timestamp("2036-02-08")))
    assert later.quarantined == {}
    # Off by default.
    assert validate_frame(frame).quarantined == {}


def test_training_window_since_max_history_and_as_of() -> None:
    frame = make_frame(days=100)  # 2026-01-01 .. 2026-04-10
    frame = frame[~((frame["athlete_id"] == "a3") & (frame["date"] > "2026-01-20"))]
    window = TrainingWindow(as_of=pd.Timestamp("2026-04-01"), max_history_days=60)
    outcome = validate_frame(frame.reset_index(drop=True), window=window)
    a1 = outcome.clean[outcome.clean["athlete_id"] == "a1"]
    assert (a1["date"].min(), a1["date"].max(), len(a1)) == (
        pd.Timestamp("2026-02-01"), pd.Timestamp("2026-04-01"), 60)
    msgs = [n["message"] for n in outcome.data_notes["a1"] if n["kind"] == "window"]
    assert msgs == ["9 row(s) after the as-of date 2026-04-01 not used",
                    "31 row(s) before 2026-02-01 (start of the training window) not used"]
    # a3 stopped early: its own last 60 days.
    assert len(outcome.clean[outcome.clean["athlete_id"] == "a3"]) == 20
    assert outcome.window["max_history_days"] == 60 and outcome.window["as_of"] == "2026-04-01"

    since = validate_frame(frame.reset_index(drop=True),
                           window=TrainingWindow(since=pd.Timestamp("2026-03-01"),
                                                 max_history_days=730))
    assert since.clean.groupby("athlete_id")["date"].min().to_dict() == {
        "a1": pd.Timestamp("2026-03-01"), "a2": pd.Timestamp("2026-03-01")}
    assert since.skipped == {"a3": "no rows in the training window (2026-03-01 .. last row)"}
    assert since.summary()["n_skipped"] == 1


def test_long_history_with_impossible_values_and_a_late_sensor_trains() -> None:
    """Issue 16's done-when: 5 years, 19 impossible sleep values, HRV only in the last
    200 days. Windowed to 730 days it trains, and every masked row is listed."""
    frame = make_frame(("long", "ok"), days=5 * 365)
    long = rows_of(frame, "long")
    frame.loc[long[:-200], "hrv_ms"] = np.nan  # the HRV strap came late
    bad = long[-700:-10:36][:19]
    frame.loc[bad, "sleep_hours"] = 17.5  # impossible: over 16 h
    frame.loc[long[5:12], "sleep_hours"] = 30.0  # outside the window: never judged
    window = TrainingWindow(max_history_days=730)
    outcome = validate_frame(frame, window=window, min_history_days=90, future_days=2,
                             today=pd.Timestamp("2031-01-01"))
    assert outcome.quarantined == {}
    clean = outcome.clean[outcome.clean["athlete_id"] == "long"]
    assert len(clean) == 730 and clean["sleep_hours"].max() <= 16
    [masked] = [n for n in outcome.data_notes["long"] if n["kind"] == "masked"]
    assert masked["count"] == 19 and masked["column"] == "sleep_hours"
    assert sorted(r["line"] for r in masked["rows"]) == sorted(frame.loc[bad, "_line"])
    assert {r["value"] for r in masked["rows"]} == {17.5}
    sensor = [n["message"] for n in outcome.data_notes["long"] if n["kind"] == "sensor"]
    assert any(m.startswith("hrv_ms starts on") and "late-starting" in m for m in sensor)
    window_notes = [n for n in outcome.data_notes["long"] if n["kind"] == "window"]
    assert window_notes[0]["count"] == 5 * 365 - 730
    # The whole file, without a window: the old impossible values count too (26 of 1825,
    # 1.4 %) and it still trains.
    assert validate_frame(frame, min_history_days=90).quarantined == {}


# --------------------------------------------------------------------------- via a source


def test_bad_type_in_csv_is_masked_and_reported_with_file_and_line(tmp_path: Path) -> None:
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

    assert outcome.quarantined == {}
    [note] = outcome.data_notes["a2"]
    assert note["count"] == 1, "the parse issue and the coerce note are one problem"
    assert (note["kind"], note["column"], note["rule"]) == ("masked", "hrv_ms", "type")
    assert note["rows"] == [{
        "date": f"{START + pd.Timedelta(days=6):%Y-%m-%d}", "value": None, "file": str(path),
        "line": bad_row + 2, "message": "value 'n/a-ms' is not a valid hrv_ms",
    }]
    assert len(outcome.clean) == len(frame)


def test_parse_issues_drop_their_rows_and_unattributed_ones_are_listed() -> None:
    frame = make_frame()
    frame.loc[len(frame) - 1, "athlete_id"] = pd.NA  # a row nobody owns
    issues = [
        ParseIssue("a3", "a3.csv", 17, "sleep_score", "line has 3 fields, expected 9"),
        ParseIssue("ghost", "ghost.csv", None, None, "file is not UTF-8"),
        ParseIssue(None, "mixed.csv", 4, None, "no athlete column on this line"),
    ]
    outcome = validate_frame(frame, issues)
    # a3: 1 unparsed row of 40 (2.4 %) is dropped; ghost has nothing but the issue.
    assert outcome.quarantined.keys() == {"ghost"}
    [note] = outcome.data_notes["a3"]
    assert (note["kind"], note["rule"], note["column"]) == ("dropped", "parse", "sleep_score")
    assert note["rows"][0]["file"] == "a3.csv" and note["rows"][0]["line"] == 17
    f = failure(outcome.quarantined["ghost"], "(row)", "parse")
    assert "file is not UTF-8" in f["detail"] and "100.0% of 1 rows" in f["detail"]
    assert outcome.quarantined["ghost"].n_rows == 0
    assert outcome.n_athletes == 4
    summary = outcome.summary()
    assert summary["n_unattributed"] == 2
    assert {(u["file"], u["rule"]) for u in summary["unattributed"]} == {
        ("mixed.csv", "parse"), ("daily.csv", "expect_column_values_to_not_be_null")}
    many = [ParseIssue("a3", "a3.csv", k, None, "row has 2 fields") for k in range(3)]
    assert validate_frame(frame, many).quarantined.keys() == {"a3"}  # 3 of 43: 7 %


@dataclass(frozen=True)
class NotedIssue(ParseIssue):
    """A ParseIssue with the optional ``severity`` that validation honours."""

    severity: str = "error"


def test_source_notes_that_are_not_errors_become_counted_notes() -> None:
    frame = make_frame()
    issues = [
        NotedIssue("a1", "wellness.csv", 14, None, "duplicate report superseded by line 15",
                   severity="note"),
        *(NotedIssue("a1", "sleep.json", k, None, "nap ignored", severity="note")
          for k in range(6)),
        NotedIssue("a2", "wellness.csv", 30, None, "row has 2 fields, expected 8"),
    ]
    outcome = validate_frame(frame, issues, adapter_notes={"a2": "no power data; no HRV"})
    assert outcome.quarantined == {}
    notes = outcome.warnings["a1"]
    assert notes[0] == ("source note (wellness.csv:14): duplicate report superseded by line 15")
    assert len(notes) == 6 and notes[-1] == "... and more source notes (see the data notes)"
    assert [n["kind"] for n in outcome.data_notes["a1"]] == ["source"] * 7
    assert [n["kind"] for n in outcome.data_notes["a2"]] == ["dropped", "adapter", "adapter"]
    counts = outcome.note_counts()
    assert (counts["source"], counts["dropped"], counts["adapter"]) == (7, 1, 2)


def test_missing_tokens_are_counted_and_abc_is_a_bad_value(tmp_path: Path) -> None:
    frame = make_frame().drop(columns=["_file", "_line"])
    frame["date"] = frame["date"].dt.strftime("%Y-%m-%d")
    frame = frame.astype({"hrv_ms": object, "tss": object})
    a2 = rows_of(frame, "a2")
    tokens = ["n/a", "NaN", "null", "#N/A", "None", "-", "NA", ""]
    frame.loc[a2[: len(tokens)], "hrv_ms"] = tokens
    frame.loc[a2[10], "tss"] = "abc"
    path = tmp_path / "daily.csv"
    frame.to_csv(path, index=False)
    loaded = CanonicalFileSource(path).load()
    outcome = validate_frame(loaded.frame, loaded.issues)
    assert outcome.quarantined == {}
    kinds = {n["kind"]: n for n in outcome.data_notes["a2"]}
    assert kinds["missing_tokens"]["count"] == 7  # blanks are the ordinary spelling
    assert "'n/a' x1" in kinds["missing_tokens"]["message"]
    assert kinds["masked"]["column"] == "tss" and kinds["masked"]["rows"][0]["line"] == 52
    assert "'abc'" in kinds["masked"]["rows"][0]["message"]
    assert outcome.note_counts()["missing_tokens"] == 7
    assert outcome.clean.loc[outcome.clean["athlete_id"] == "a2", "hrv_ms"].isna().sum() == 8


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


def test_athlete_suite_checks_rates_shares_future_and_history() -> None:
    suite = build_athlete_suite(
        {"recovery_score": 0.5},
        row_shares={"bad_share_0": ("expect_column_values_to_be_between", "hrv_ms", 0.05)},
        future_days=2, min_history_days=90)
    kinds = {(e.column, e.min_value, e.max_value) for e in suite.expectations}
    assert kinds == {("recovery_score_missing_rate", 0.0, 0.5), ("bad_share_0", 0.0, 0.05),
                     ("days_ahead", None, 2), ("clean_days", 90, None)}


# --------------------------------------------------------------------------- reports


def test_markdown_report_names_athlete_column_rule_and_rows() -> None:
    frame = make_frame()
    frame.loc[rows_of(frame, "a1")[2:5], "hrv_ms"] = 900.0
    frame.loc[rows_of(frame, "a1")[3:6], "sleep_score"] = 140.0
    md = validate_frame(frame).quarantined["a1"].to_markdown()
    assert md.startswith("# Quarantine report: athlete `a1`")
    assert "column `hrv_ms`, rule `expect_column_values_to_be_between`" in md
    assert "column `sleep_score`, rule `expect_column_values_to_be_between`" in md
    assert "| 2026-01-03 | 900 | daily.csv |" in md
    assert "| 2026-01-04 | 140 | daily.csv |" in md


def test_write_quarantine_reports(tmp_path: Path) -> None:
    frame = break_hrv(make_frame(), n=3)
    frame.loc[rows_of(frame, "a3"), "athlete_id"] = "team/a3"
    frame.loc[rows_of(frame, "team/a3")[:3], "tss"] = -5.0
    frame.loc[rows_of(frame, "a1")[0], "tss"] = -5.0  # within tolerance: a data note
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
    notes = json.loads((tmp_path / "quarantine" / "data_notes.json").read_text())
    assert notes["counts"]["masked"] == 7 and index["data_notes"] == "data_notes.json"
    assert notes["athletes"]["a1"][0]["rows"][0]["value"] == -5.0


# --------------------------------------------------------------------------- scale


@pytest.mark.slow
def test_a_full_week_validates_in_seconds() -> None:
    """1,000 athletes x 180 days through both suites once; the broken few are found."""
    athletes = tuple(f"ath{i:04d}" for i in range(1000))
    frame = make_frame(athletes, days=180, seed=3)
    frame.loc[rows_of(frame, "ath0007")[50:70], "hrv_ms"] = 900.0
    frame.loc[rows_of(frame, "ath0008")[50], "hrv_ms"] = 900.0  # within tolerance
    frame.loc[rows_of(frame, "ath0500")[::3], "recovery_score"] = np.nan  # 2 of 3 days
    frame.loc[rows_of(frame, "ath0500")[1::3], "recovery_score"] = np.nan
    frame = duplicate_date(frame.assign(athlete_id=frame["athlete_id"].replace(
        {"ath0999": "a2"})), n=10)
    start = time.perf_counter()
    outcome = validate_frame(frame)
    elapsed = time.perf_counter() - start
    assert outcome.quarantined.keys() == {"ath0007", "ath0500", "a2"}
    assert outcome.note_counts()["masked"] == 21
    assert_nothing_lost(outcome, frame)
    assert elapsed < 60, f"validation took {elapsed:.1f} s"


# --------------------------------------------------------------------------- real-shaped


def test_long_intervals_export_trains_in_its_window_and_lists_each_masked_value() -> None:
    """tests/fixtures/intervals_long: 1,100 days, late sensors, 4 impossible values.

    Through the run's own settings (window 730 days, min_history_days 90, tolerances
    5 %): not quarantined, each impossible value masked and listed by file and line,
    the late sensors are notes, and the days before the window are counted.
    """
    from veloready_pipeline.config import Settings
    from veloready_pipeline.ingest import IngestResult, validate_ingested
    from veloready_pipeline.sources.intervals import IntervalsSource

    folder = Path(__file__).parent / "fixtures" / "intervals_long"
    loaded = IntervalsSource(folder).load()
    ingested = IngestResult(loaded.frame, loaded.issues, loaded.notes, "intervals", str(folder))
    outcome = validate_ingested(ingested, Settings(), today=pd.Timestamp("2025-01-10"))
    assert outcome.quarantined == {} and outcome.skipped == {}
    clean = outcome.clean
    assert len(clean) == 730 and clean["date"].max() == pd.Timestamp("2025-01-04")
    masked = {(n["column"], r["line"]): r["value"] for n in outcome.data_notes["i3001"]
              if n["kind"] == "masked" for r in n["rows"]}
    assert masked == {("sleep_hours", 952): pytest.approx(19.5),
                      ("resting_hr", 1012): 300.0, ("hrv_ms", 1042): 999.0,
                      ("sleep_hours", 1077): pytest.approx(19.0)}
    kinds = {n["kind"] for n in outcome.data_notes["i3001"]}
    assert {"masked", "adapter", "sensor", "window"} <= kinds
    [window] = [n for n in outcome.data_notes["i3001"] if n["kind"] == "window"]
    assert window["count"] == 1100 - 730
    assert any("hrv_ms starts on 2024-03-11" in n["message"]
               for n in outcome.data_notes["i3001"] if n["kind"] == "sensor")
    # Without a window (the whole file) it trains too: the same columns, the same notes.
    whole = validate_frame(loaded.frame, loaded.issues, min_history_days=90)
    assert whole.quarantined == {}
