"""PMData source: small synthetic participants for the rules, the real set for coverage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from veloready_pipeline.sources.common import severity_of
from veloready_pipeline.sources.pmdata import (
    INJURY_RECURRENCE_DAYS,
    READINESS_ZERO_RUN,
    TSS_PER_SRPE_AU,
    PMDataSource,
    five_point_to_score,
    local_day,
)

PMDATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pmdata"
WELLNESS_HEADER = ("effective_time_frame,fatigue,mood,readiness,sleep_duration_h,"
                   "sleep_quality,soreness,soreness_area,stress")
SLEEP_HEADER = ("timestamp,sleep_log_entry_id,overall_score,composition_score,"
                "revitalization_score,duration_score,deep_sleep_in_minutes,resting_heart_rate,"
                "restlessness")


def participant(root: Path, name: str = "p99", *, wellness: list[str] | None = None,
                srpe: list[str] | None = None, injury: list[str] | None = None,
                sleep: list[str] | None = None, rhr: object = None) -> Path:
    """Write a PMData participant folder; ``None`` leaves a file out."""
    folder = root / name
    (folder / "pmsys").mkdir(parents=True)
    (folder / "fitbit").mkdir()
    if wellness is not None:
        (folder / "pmsys" / "wellness.csv").write_text(
            "\n".join([WELLNESS_HEADER, *wellness]) + "\n", encoding="utf-8")
    if srpe is not None:
        (folder / "pmsys" / "srpe.csv").write_text(
            "\n".join(["end_date_time,activity_names,perceived_exertion,duration_min", *srpe])
            + "\n", encoding="utf-8")
    if injury is not None:
        (folder / "pmsys" / "injury.csv").write_text(
            "\n".join(["effective_time_frame,injuries", *injury]) + "\n", encoding="utf-8")
    if sleep is not None:
        (folder / "fitbit" / "sleep_score.csv").write_text(
            "\n".join([SLEEP_HEADER, *sleep]) + "\n", encoding="utf-8")
    if rhr is not None:
        text = rhr if isinstance(rhr, str) else json.dumps(rhr)
        (folder / "fitbit" / "resting_heart_rate.json").write_text(text, encoding="utf-8")
    return folder


def rhr_entry(day: str, value: float) -> dict[str, object]:
    return {"dateTime": f"{day} 00:00:00", "value": {"date": day, "value": value, "error": 6.8}}


def by_day(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {str(r["date"].date()): r for _, r in frame.iterrows()}


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(("answer", "score"), [(1, 0.0), (2, 25.0), (3, 50.0), (5, 100.0)])
def test_five_point_scale(answer: int, score: float) -> None:
    assert five_point_to_score(answer) == score


@pytest.mark.parametrize(
    ("stamp", "day"),
    [
        ("2019-11-01T08:31:40.751Z", "2019-11-01"),
        ("2019-11-01T23:30:00Z", "2019-11-02"),  # 00:30 in Oslo (UTC+1)
        ("2020-03-29T22:30:00Z", "2020-03-30"),  # 00:30 in Oslo after DST (UTC+2)
        ("2020-03-29T21:30:00Z", "2020-03-29"),
        ("2019-11-01 22:59:59", "2019-11-01"),  # naive: UTC per the README
    ],
)
def test_local_day(stamp: str, day: str) -> None:
    assert local_day(stamp, "Europe/Oslo") == pd.Timestamp(day)


def test_wellness_mapping_and_local_days(tmp_path: Path) -> None:
    participant(tmp_path, wellness=[
        "2019-11-01T08:31:40.751Z,2,3,5,6,3,2,[12921003],3",
        "2019-11-01T23:10:00.000Z,5,5,10,8.5,5,5,[],5",  # 00:10 local on 2 Nov
    ])
    result = PMDataSource(tmp_path).load()
    days = by_day(result.frame)
    d1, d2 = days["2019-11-01"], days["2019-11-02"]
    assert d1["recovery_score"] == 50 and d1["sleep_hours"] == 6
    assert (d1["fatigue"], d1["mood"], d1["soreness"], d1["stress"]) == (25, 50, 25, 50)
    assert d2["recovery_score"] == 100 and d2["fatigue"] == 100 and d2["sleep_hours"] == 8.5
    assert not result.issues
    assert "no HRV (PMData has none)" in result.notes["p99"]
    assert "no power data" in result.notes["p99"]


def test_wellness_bad_rows_are_reported(tmp_path: Path) -> None:
    participant(tmp_path, wellness=[
        "2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3",
        "2019-11-02T08:00:00Z,0,0,0,0,0,0,[],0",  # line 3: empty form
        "yesterday,3,3,7,7,3,3,[],3",  # line 4: no timestamp
        "2019-11-03T08:00:00Z,3,x,7,7,3,6,[],0",  # line 5: mood text, soreness 6, stress 0
        "2019-11-04T07:00:00Z,3,3,11,7,3,3,[],3",  # line 6: readiness 11
        "2019-11-04T09:00:00Z,4,3,8,7,3,3,[],3",  # line 7: later report the same day wins
    ])
    result = PMDataSource(tmp_path).load()
    days = by_day(result.frame)
    assert "2019-11-02" not in days
    d3 = days["2019-11-03"]
    assert math.isnan(d3["mood"]) and math.isnan(d3["soreness"]) and math.isnan(d3["stress"])
    assert d3["fatigue"] == 50 and d3["recovery_score"] == 70
    assert days["2019-11-04"]["recovery_score"] == 80
    got = sorted((i.line, i.column or "", severity_of(i)) for i in result.issues)
    assert got == [(3, "", "warning"),  # empty form
                   (4, "effective_time_frame", "error"),
                   (5, "mood", "error"), (5, "soreness", "error"),
                   (5, "stress", "warning"),  # 0 = unanswered
                   (6, "", "warning"),  # superseded by line 7
                   (6, "readiness", "error")]
    assert any("superseded" in i.message for i in result.issues if i.line == 6)
    assert "1 wellness report(s) superseded by a later report" in result.notes["p99"]
    assert all(i.file.endswith("pmsys/wellness.csv") and i.athlete_id == "p99"
               for i in result.issues)


def test_long_runs_of_zero_readiness_are_unanswered(tmp_path: Path) -> None:
    run = READINESS_ZERO_RUN
    rows = [f"2019-11-{d + 1:02d}T08:00:00Z,3,3,0,7,3,3,[],3" for d in range(run)]
    rows += ["2019-11-20T08:00:00Z,3,3,6,7,3,3,[],3",
             "2019-11-21T08:00:00Z,1,3,0,7,3,1,[],3"]  # a single 0 is a real answer
    participant(tmp_path, wellness=rows)
    result = PMDataSource(tmp_path).load()
    scores = result.frame.set_index(result.frame["date"].dt.day)["recovery_score"]
    assert scores.iloc[:run].isna().all()
    assert scores.loc[20] == 60 and scores.loc[21] == 0
    assert [(i.line, i.column, severity_of(i)) for i in result.issues] == [
        (2, "readiness", "warning")
    ]
    assert f"lines 2-{run + 1}" in result.issues[0].message


def test_sessions_become_load_on_the_start_day(tmp_path: Path) -> None:
    participant(tmp_path, wellness=[
        "2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3",
        "2019-11-03T08:00:00Z,3,3,7,7,3,3,[],3",
    ], srpe=[
        "2019-11-01T18:00:00.000Z,\"['team', 'soccer']\",7,60",
        "2019-11-01T20:00:00.000Z,\"['individual', 'running']\",5,30",
        # Ends 00:20 local on 3 Nov after 60 min: started 23:20 on 2 Nov.
        "2019-11-02T23:20:00.000Z,\"['individual', 'running']\",6,60",
        "2019-11-04T10:00:00.000Z, {},,",  # line 5: an empty entry
        "2019-11-05T10:00:00.000Z, {},7,",  # line 6: RPE without duration
        "2019-11-05T11:00:00.000Z, {},hard,60",  # line 7: RPE not a number
    ])
    result = PMDataSource(tmp_path).load()
    days = by_day(result.frame)
    assert days["2019-11-01"]["session_load"] == 7 * 60 + 5 * 30
    assert days["2019-11-01"]["tss"] == pytest.approx((7 * 60 + 5 * 30) * TSS_PER_SRPE_AU)
    assert days["2019-11-02"]["session_load"] == 360  # a session-only day is a row
    assert days["2019-11-03"]["session_load"] == 0 and days["2019-11-03"]["tss"] == 0
    assert [(i.line, i.column, severity_of(i)) for i in result.issues] == [
        (5, "perceived_exertion", "warning"), (6, "duration_min", "error"), (7, None, "error")
    ]


def test_one_hour_at_session_rpe_8_is_100_tss() -> None:
    assert 60 * 8 * TSS_PER_SRPE_AU == pytest.approx(100.0)


def test_no_sessions_leaves_load_empty(tmp_path: Path) -> None:
    participant(tmp_path, wellness=["2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3"],
                srpe=["2019-11-04T10:00:00.000Z, {},,"])
    result = PMDataSource(tmp_path).load()
    assert result.frame["tss"].isna().all()
    assert "no usable sessions" in result.notes["p99"]


def test_injury_events(tmp_path: Path) -> None:
    far = 2 + INJURY_RECURRENCE_DAYS + 1
    participant(tmp_path, wellness=["2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3"], injury=[
        "2019-11-02T08:00:00Z,{}",
        "2019-11-03T08:00:00Z,{'right_knee': 'minor'}",  # new -> event
        "2019-11-04T08:00:00Z,{}",
        "2019-11-05T08:00:00Z,{'right_knee': 'minor'}",  # back within the window: same one
        "2019-11-06T08:00:00Z,{'right_knee': 'major'}",  # worse -> event
        "2019-11-07T08:00:00Z,\"{'left_foot': 'minor', 'right_knee': 'major'}\"",  # new part
        f"2019-11-{far + 5:02d}T08:00:00Z,{{'right_knee': 'minor'}}",  # after the window
        "2019-11-30T08:00:00Z,{'oops'",  # malformed
    ])
    result = PMDataSource(tmp_path).load()
    flags = {str(d.date()): f for d, f in zip(result.frame["date"], result.frame["injury"],
                                              strict=True)}
    events = sorted(d for d, f in flags.items() if f == 1)
    assert events == ["2019-11-03", "2019-11-06", "2019-11-07", f"2019-11-{far + 5:02d}"]
    assert flags["2019-11-01"] == 0  # a day without a report of someone who reports
    assert [(i.line, i.column, severity_of(i)) for i in result.issues] == [
        (9, "injuries", "error")
    ]


def test_no_injury_file_means_unknown(tmp_path: Path) -> None:
    participant(tmp_path, wellness=["2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3"])
    frame = PMDataSource(tmp_path).load()
    assert "injury" not in frame.frame or frame.frame["injury"].isna().all()
    assert "injury unknown" in frame.notes["p99"]


def test_fitbit_only_days_sleep_logs_and_resting_hr(tmp_path: Path) -> None:
    participant(tmp_path, wellness=["2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3"], sleep=[
        "2019-11-01T06:29:30Z,1,76,18,20,38,27,53,0.05",
        "2019-11-02T06:30:00Z,2,70,18,20,40,27,55,0.05",  # main sleep on 2 Nov
        "2019-11-02T13:30:00Z,3,50,10,10,20,5,55,0.05",  # line 4: a nap, not used
        "2019-11-03T06:30:00Z,4,81,18,20,40,27,58,0.05",  # no JSON reading: fallback RHR
        "2019-11-04T06:30:00Z,5,high,18,20,40,27,0,0.05",  # line 6: bad score, RHR 0
    ], rhr=[rhr_entry("2019-11-01", 53.7), rhr_entry("2019-11-02", 54.2),
            rhr_entry("2019-11-03", 0), rhr_entry("2019-11-05", 51.0), {"bad": 1}])
    result = PMDataSource(tmp_path).load()
    days = by_day(result.frame)
    # 4 Nov has only a broken sleep log (reported below): no value, so no row.
    assert list(days) == ["2019-11-01", "2019-11-02", "2019-11-03", "2019-11-05"]
    assert days["2019-11-02"]["sleep_score"] == 70 and days["2019-11-02"]["resting_hr"] == 54.2
    assert days["2019-11-03"]["resting_hr"] == 58  # from the sleep log
    assert days["2019-11-05"]["resting_hr"] == 51 and math.isnan(days["2019-11-05"]["sleep_score"])
    lines = sorted((Path(i.file).name, i.line or 0, severity_of(i)) for i in result.issues)
    assert lines == [("resting_heart_rate.json", 0, "error"),  # entry without a reading
                     ("sleep_score.csv", 4, "warning"),  # the nap
                     ("sleep_score.csv", 6, "error")]  # score "high"
    assert "1 from sleep logs" in result.notes["p99"]
    assert "1 readings of 0 treated as missing" in result.notes["p99"]


def test_broken_json_is_reported_with_its_line(tmp_path: Path) -> None:
    participant(tmp_path, wellness=["2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3"],
                rhr='[{"dateTime": "2019-11-01 00:00:00",\n "value": {"value": 5')
    result = PMDataSource(tmp_path).load()
    assert [(Path(i.file).name, i.line) for i in result.issues] == [
        ("resting_heart_rate.json", 2)
    ]


def test_a_file_without_its_columns_is_one_error(tmp_path: Path) -> None:
    folder = participant(tmp_path, wellness=["2019-11-01T08:00:00Z,3,3,7,7,3,3,[],3"],
                         srpe=["2019-11-01T18:00:00Z,run,7"])
    (folder / "pmsys" / "srpe.csv").write_text(
        "end_date_time,activity_names,rpe\n2019-11-01T18:00:00Z,run,7\n", encoding="utf-8")
    result = PMDataSource(tmp_path).load()
    assert [(Path(i.file).name, i.line, i.column, severity_of(i)) for i in result.issues] == [
        ("srpe.csv", 1, "perceived_exertion", "error")
    ]
    assert "not used" in result.issues[0].message
    assert result.frame["tss"].isna().all()


def test_not_a_pmdata_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no participant folders"):
        PMDataSource(tmp_path).load()
    with pytest.raises(FileNotFoundError):
        PMDataSource(tmp_path / "nope").load()


# --------------------------------------------------------------------------- real data

needs_pmdata = pytest.mark.skipif(
    not PMDATA.is_dir(), reason=f"PMData not found at {PMDATA} (shared data folder absent)"
)


@needs_pmdata
@pytest.mark.parametrize("person", ["p01", "p05"])
def test_real_participant_folder(person: str) -> None:
    result = PMDataSource(PMDATA / person).load()
    frame = result.frame
    assert set(frame["athlete_id"]) == {person}
    assert not frame.duplicated(["athlete_id", "date"]).any()
    assert frame["date"].min() >= pd.Timestamp("2019-11-01")
    assert frame["date"].max() <= pd.Timestamp("2020-03-31")
    assert "hrv_ms" not in frame or frame["hrv_ms"].isna().all()
    for col, lo, hi in [("recovery_score", 0, 100), ("sleep_score", 0, 100),
                        ("resting_hr", 30, 100), ("fatigue", 0, 100)]:
        values = frame[col].dropna()
        assert len(values) and values.between(lo, hi).all(), col
    if person == "p01":
        # First wellness row: 2019-11-01T08:31:40Z,2,3,5,6,3,2,...,3; sleep score 76;
        # daily RHR 53.74 in the Fitbit file.
        first = frame.iloc[0]
        assert first["date"] == pd.Timestamp("2019-11-01")
        assert (first["recovery_score"], first["fatigue"], first["sleep_hours"]) == (50, 25, 6)
        assert first["sleep_score"] == 76 and first["resting_hr"] == pytest.approx(53.741, 1e-3)
        assert not result.issues
    else:
        # p05 left the readiness slider at 0 for two months and sent two empty forms.
        runs = [i for i in result.issues if "consecutive" in i.message]
        assert [i.line for i in runs] == [3, 52]
        empty = [i.line for i in result.issues if "empty submission" in i.message]
        assert empty == [40, 48]
        assert frame["recovery_score"].dropna().min() >= 0


@needs_pmdata
def test_all_sixteen_people_appear() -> None:
    result = PMDataSource(PMDATA).load()
    frame = result.frame
    people = [f"p{i:02d}" for i in range(1, 17)]
    assert sorted(frame["athlete_id"].unique()) == people
    assert sorted(result.notes) == people
    assert all("no HRV" in result.notes[p] and "no power data" in result.notes[p]
               for p in people)
    assert not frame.duplicated(["athlete_id", "date"]).any()
    counts = frame.groupby("athlete_id").size()
    assert (counts >= 60).all()
    # p08 filed no injury reports; p16's sessions have no RPE: both unknown, not zero.
    assert frame.loc[frame["athlete_id"] == "p08", "injury"].isna().all()
    assert frame.loc[frame["athlete_id"] == "p16", "tss"].isna().all()
    assert "no usable sessions" in result.notes["p16"]
    # Every issue names its participant, file and (for CSV rows) line; the shipped data
    # only has problems this source settles itself (duplicates, empty forms, naps, ...).
    assert all(i.athlete_id in people and Path(i.file).exists() for i in result.issues)
    assert all(i.line is not None for i in result.issues if i.file.endswith(".csv"))
    assert {severity_of(i) for i in result.issues} == {"warning"}


def test_missing_tokens_are_counted_per_column(tmp_path: Path) -> None:
    participant(
        tmp_path, wellness=[
            "2019-11-01T08:00:00.000Z,3,n/a,7,7.5,3,3,[],3",
            "2019-11-02T08:00:00.000Z,3,NaN,#N/A,7.5,3,3,[],3",
            "2019-11-03T08:00:00.000Z,abc,4,8,-,3,3,[],3",  # line 4: fatigue 'abc'
            "2019-11-04T08:00:00.000Z,3,4,8,7,3,3,[],3",
        ],
        sleep=["2019-11-01T23:00:00Z,1,NaN,70,70,80,60,50,0.1",
               "2019-11-02T23:00:00Z,2,80,70,70,80,60,null,0.1"],
        srpe=["2019-11-01T18:00:00.000Z,['cycling'],5,60"],
    )
    result = PMDataSource(tmp_path).load()
    tokens = {(Path(i.file).name, i.column): i for i in result.issues if hasattr(i, "count")}
    assert {k: i.count for k, i in tokens.items()} == {  # type: ignore[attr-defined]
        ("wellness.csv", "mood"): 2, ("wellness.csv", "readiness"): 1,
        ("wellness.csv", "sleep_duration_h"): 1, ("sleep_score.csv", "overall_score"): 1,
        ("sleep_score.csv", "resting_heart_rate"): 1}
    assert all(i.athlete_id == "p99" and severity_of(i) == "warning" for i in tokens.values())
    assert tokens[("wellness.csv", "readiness")].message == (
        "1 readiness cell(s) spelled as missing ('#N/A' x1): read as missing (recovery_score)")
    errors = [(i.line, i.column) for i in result.issues if severity_of(i) == "error"]
    assert errors == [(4, "fatigue")]
    days = by_day(result.frame)
    assert math.isnan(days["2019-11-03"]["fatigue"]) and days["2019-11-03"]["mood"] == 75.0


def test_abc_is_masked_and_tokens_counted_in_the_runs_data_notes(tmp_path: Path) -> None:
    """PMData rows carry no file/line; the bad value names its day, so it is masked."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from veloready_pipeline.config import Settings
    from veloready_pipeline.ingest import data_notes_line, load_data, validate_ingested

    start = dt.datetime.now(dt.UTC).replace(hour=8) - dt.timedelta(days=60)
    rows = []
    for i in range(40):
        stamp = (start + dt.timedelta(days=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        rows.append(f"{stamp},{'abc' if i == 10 else 3},{'n/a' if i < 3 else 4},7,7.5,3,3,"
                    "[],3")
    participant(tmp_path / "pm", wellness=rows)
    settings = Settings()
    ingested = load_data(settings, data=str(tmp_path / "pm"))
    assert ingested.source == "pmdata"
    outcome = validate_ingested(ingested, settings)
    assert outcome.quarantined == {}
    notes = outcome.data_notes["p99"]
    assert [(n["column"], n["count"]) for n in notes if n["kind"] == "missing_tokens"] == [
        ("mood", 3)]
    masked = [n for n in notes if n["kind"] == "masked"]
    assert len(masked) == 1 and masked[0]["column"] == "fatigue"
    row = masked[0]["rows"][0]
    day = (start + dt.timedelta(days=10)).astimezone(ZoneInfo("Europe/Oslo")).date()
    assert (row["line"], row["date"]) == (12, str(day)) and "'abc'" in row["message"]
    counts = outcome.note_counts()
    assert (counts["missing_tokens"], counts["masked"], counts["dropped"]) == (3, 1, 0)
    assert "1 masked values, 0 dropped rows" in data_notes_line(counts)
    assert len(outcome.clean) == 40
