"""intervals.icu wellness exports: BOM, sparse cells, scales, load, injury, custom fields."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from veloready_pipeline.sources.common import severity_of
from veloready_pipeline.sources.intervals import (
    IntervalsSource,
    athlete_id_for,
    four_point_to_score,
    looks_like_intervals,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "intervals"
HEADER = ("date,restingHR,hrv,hrvSDNN,sleepSecs,sleepScore,readiness,soreness,fatigue,"
          "stress,mood,injury,ctl,atl,ctlLoad,atlLoad,Caffeine")


def export(tmp_path: Path, rows: list[str], name: str = "i42_wellness.csv",
           header: str = HEADER, bom: bool = True) -> Path:
    path = tmp_path / name
    text = ("\ufeff" if bom else "") + "\r\n".join([header, *rows]) + "\r\n"
    path.write_bytes(text.encode("utf-8"))
    return path


def test_fixture_exports_read() -> None:
    result = IntervalsSource(FIXTURES).load()
    frame = result.frame
    assert frame.groupby("athlete_id").size().to_dict() == {
        "i1001": 140, "i1002": 140, "i1003": 20
    }
    assert [(i.athlete_id, Path(i.file).name, i.line, i.column, severity_of(i))
            for i in result.issues] == [
        ("i1003", "i1003_wellness.csv", 12, "restingHR", "error")
    ]
    # Line 2 of i1001: 2024-01-01,71.8,49,62.4,81.1,27962,80,,69,... ctl 39.05, no load.
    first = frame.iloc[0]
    assert (first["athlete_id"], first["date"]) == ("i1001", pd.Timestamp("2024-01-01"))
    assert first["resting_hr"] == 49 and first["hrv_ms"] == pytest.approx(62.4)
    assert first["sleep_hours"] == pytest.approx(27962 / 3600)
    assert first["sleep_score"] == 80 and first["recovery_score"] == 69
    assert first["tss"] == 0.0  # ctl present, no load: a rest day
    assert math.isnan(first["soreness"])  # the form was not filled that day
    assert result.notes["i1001"] == (
        "no power data; custom fields not used: Caffeine, HRV4T_Recovery_Points"
    )
    # The one hand-typed "6O" (i1003, 2024-01-11) leaves that resting HR empty, no more.
    bad_day = frame[(frame["athlete_id"] == "i1003") & (frame["date"] == "2024-01-11")].iloc[0]
    assert math.isnan(bad_day["resting_hr"]) and bad_day["hrv_ms"] == 42
    assert bad_day["_line"] == 12 and bad_day["_file"].endswith("i1003_wellness.csv")


def test_bom_header_is_recognised_with_and_without_bom(tmp_path: Path) -> None:
    row = "2024-01-01,50,60,,28800,80,70,,,,,,40,45,80,80,"
    for bom in (True, False):
        f = export(tmp_path, [row], bom=bom)
        frame = IntervalsSource(f).load().frame
        assert frame.iloc[0]["date"] == pd.Timestamp("2024-01-01")
        assert frame.iloc[0]["sleep_hours"] == 8.0


@pytest.mark.parametrize(("level", "score"), [(1, 100.0), (2, 200 / 3), (3, 100 / 3), (4, 0.0)])
def test_four_point_scale_maps_best_to_100(level: int, score: float) -> None:
    assert four_point_to_score(level) == pytest.approx(score)


def test_subjective_fields_and_out_of_scale_values(tmp_path: Path) -> None:
    f = export(tmp_path, [
        "2024-01-01,,,,,,,1,4,2,3,,,,,,",
        "2024-01-02,,,,,,,5,0,,,,,,,,",  # line 3: both outside 1-4
    ])
    result = IntervalsSource(f).load()
    a, b = result.frame.iloc[0], result.frame.iloc[1]
    assert (a["soreness"], a["fatigue"]) == (100.0, 0.0)
    assert a["stress"] == pytest.approx(200 / 3) and a["mood"] == pytest.approx(100 / 3)
    assert math.isnan(b["soreness"]) and math.isnan(b["fatigue"])
    assert {(i.line, i.column) for i in result.issues} == {(3, "soreness"), (3, "fatigue")}


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ("40,45,80,70", 80.0),  # ctlLoad wins
        ("40,45,,70", 70.0),  # atlLoad when ctlLoad is empty
        ("40,45,,", 0.0),  # fitness computed, no load: rest day
        (",,,", math.nan),  # nothing known
    ],
)
def test_daily_load(tmp_path: Path, cells: str, expected: float) -> None:
    f = export(tmp_path, [f"2024-01-01,,,,,,,,,,,,{cells},"])
    tss = IntervalsSource(f).load().frame.iloc[0]["tss"]
    assert (math.isnan(tss) and math.isnan(expected)) or tss == expected


def test_readiness_scale_detection(tmp_path: Path) -> None:
    ten = export(tmp_path, ["2024-01-01,,,,,,7,,,,,,,,,,", "2024-01-02,,,,,,9,,,,,,,,,,"],
                 name="a_wellness.csv")
    result = IntervalsSource(ten).load()
    assert list(result.frame["recovery_score"]) == [70.0, 90.0]
    assert "0-10 scale" in result.notes["a"]
    hundred = export(tmp_path, ["2024-01-01,,,,,,7,,,,,,,,,,", "2024-01-02,,,,,,88,,,,,,,,,,"],
                     name="b_wellness.csv")
    assert list(IntervalsSource(hundred).load().frame["recovery_score"]) == [7.0, 88.0]


def test_injury_events_start_when_level_reaches_niggle(tmp_path: Path) -> None:
    levels = ["1", "2", "3", "", "2", "1", "3", "1"]
    rows = [f"2024-01-{d + 1:02d},,,,,,,,,,,{lv},,,,," for d, lv in enumerate(levels)]
    frame = IntervalsSource(export(tmp_path, rows)).load().frame
    got = frame["injury"].tolist()
    expected = [0.0, 1.0, 0.0, math.nan, 0.0, 0.0, 1.0, 0.0]
    assert [("nan" if math.isnan(x) else x) for x in got] == [
        ("nan" if math.isnan(x) else x) for x in expected
    ]


def test_no_injury_entries_is_noted(tmp_path: Path) -> None:
    result = IntervalsSource(export(tmp_path, ["2024-01-01,50,,,,,,,,,,,,,,,"])).load()
    assert "no injury entries" in result.notes["i42"]
    assert "custom fields not used: Caffeine" in result.notes["i42"]


def test_bad_dates_and_duplicates_are_reported(tmp_path: Path) -> None:
    f = export(tmp_path, [
        "2024-01-01,50,,,,,,,,,,,,,,,",
        "01/02/2024?,51,,,,,,,,,,,,,,,",  # line 3: not a date
        "2024-01-01,52,,,,,,,,,,,,,,,",  # line 4: same date again
    ])
    result = IntervalsSource(f).load()
    assert list(result.frame["resting_hr"]) == [52.0]
    assert [(i.line, i.column, severity_of(i)) for i in result.issues] == [
        (3, "date", "error"), (2, "date", "warning")
    ]
    assert "superseded" in result.issues[1].message


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("i12345_wellness.csv", "i12345"),
        ("athlete-7 wellness (1).csv", "athlete-7"),
        ("i99-Wellness.csv", "i99"),
        ("rider.csv", "rider"),
    ],
)
def test_athlete_id_from_file_name(name: str, expected: str) -> None:
    assert athlete_id_for(Path("/data") / name) == expected


def test_plain_wellness_csv_takes_the_folder_name(tmp_path: Path) -> None:
    folder = tmp_path / "bob"
    folder.mkdir()
    f = export(folder, ["2024-01-01,50,,,,,,,,,,,,,,,"], name="wellness.csv")
    assert list(IntervalsSource(f).load().frame["athlete_id"]) == ["bob"]


def test_two_files_for_one_athlete_is_an_error(tmp_path: Path) -> None:
    export(tmp_path, ["2024-01-01,50,,,,,,,,,,,,,,,"], name="i1_wellness.csv")
    export(tmp_path, ["2024-01-02,50,,,,,,,,,,,,,,,"], name="i1-wellness.csv")
    with pytest.raises(ValueError, match="both map to athlete 'i1'"):
        IntervalsSource(tmp_path).load()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (["\ufeffdate", "restingHR", "hrv"], True),
        (["date", "sleepSecs"], True),
        (["date", "weight"], False),
        (["day", "restingHR"], False),
        (["athlete_id", "date", "hrv_ms"], False),
    ],
)
def test_looks_like_intervals(header: list[str], expected: bool) -> None:
    assert looks_like_intervals(header) is expected


def test_duplicate_date_keeps_the_row_updated_last(tmp_path: Path) -> None:
    header = "date,restingHR,updated"
    f = export(tmp_path, [
        "2024-01-01,50,2024-01-01T07:00:00Z",
        "2024-01-02,51,2024-01-02T09:30:00Z",  # line 3: updated later than line 4
        "2024-01-02,58,2024-01-02T06:00:00Z",  # line 4: an older sync, later in the file
        "2024-01-03,52,",
        "2024-01-03,53,",  # no updated time: the later line wins
    ], header=header)
    result = IntervalsSource(f).load()
    assert result.frame["resting_hr"].tolist() == [50.0, 51.0, 53.0]
    assert [(i.line, severity_of(i)) for i in result.issues] == [(4, "warning"), (5, "warning")]
    assert "line 3, which is kept (updated later)" in result.issues[0].message
    assert "the later line wins" in result.issues[1].message
    assert "2 row(s) superseded by another row of the same date" in result.notes["i42"]


def test_ten_point_sleep_score_is_converted_and_noted(tmp_path: Path) -> None:
    f = export(tmp_path, ["2024-01-01,,,,,0.6,,,,,,,,,,,", "2024-01-02,,,,,8.5,,,,,,,,,,,",
                          "2024-01-03,,,,,10,,,,,,,,,,,"])
    result = IntervalsSource(f).load()
    assert result.frame["sleep_score"].tolist() == pytest.approx([6.0, 85.0, 100.0])
    assert ("sleepScore is on a 0-10 scale in this export (all 3 values <= 10, largest 10): "
            "multiplied by 10 into sleep_score") in result.notes["i42"]
    hundred = export(tmp_path, ["2024-01-01,,,,,8,,,,,,,,,,,", "2024-01-02,,,,,85,,,,,,,,,,,"],
                     name="b_wellness.csv")
    assert IntervalsSource(hundred).load().frame["sleep_score"].tolist() == [8.0, 85.0]


def test_ride_eftp_is_the_estimated_ftp(tmp_path: Path) -> None:
    header = "date,restingHR,Run_eftp,VirtualRide_eftp,Ride_eftp,Ride_wPrime"
    f = export(tmp_path, ["2024-01-01,50,310,255,262,20100", "2024-01-02,50,,251,,",
                          "2024-01-03,50,300,,,"], header=header)
    result = IntervalsSource(f).load()
    eftp = result.frame["eftp_w"].tolist()
    assert eftp[:2] == [262.0, 251.0] and math.isnan(eftp[2])  # running power is not used
    notes = result.notes["i42"]
    assert "estimated FTP (eftp_w) from Ride_eftp then VirtualRide_eftp on 2 day(s)" in notes
    assert "custom fields not used: Run_eftp, Ride_wPrime" in notes


ACTIVITIES = ("id,start_date_local,type,name,moving_time,icu_training_load,icu_eftp\n"
              "i1,2024-01-01T08:30:34,Ride,Morning Ride,3600,62,255\n")


def test_export_folder_with_activities_beside_wellness(tmp_path: Path) -> None:
    from veloready_pipeline.sources import detect_source_name

    folder = tmp_path / "i77"
    folder.mkdir()
    export(folder, ["2024-01-01,50,,,,,,,,,,,,,62,62,"], name="wellness.csv")
    (folder / "activities.csv").write_text(ACTIVITIES, encoding="utf-8")
    assert detect_source_name(str(folder)) == "intervals"
    src = IntervalsSource(folder)
    assert [p.name for p in src.files()] == ["wellness.csv"]
    result = src.load()
    assert result.frame["athlete_id"].tolist() == ["i77"] and not result.issues
    assert "activities.csv: an intervals.icu activities export" in result.notes["i77"]
    # A root holding one such folder per athlete.
    other = tmp_path / "i78"
    other.mkdir()
    export(other, ["2024-01-05,55,,,,,,,,,,,,,,,"], name="wellness.csv")
    assert detect_source_name(str(tmp_path)) == "intervals"
    assert sorted(IntervalsSource(tmp_path).load().frame["athlete_id"]) == ["i77", "i78"]
    # Only an activities export: one clear error.
    with pytest.raises(ValueError, match="only activities exports.*give the wellness export"):
        IntervalsSource(folder / "activities.csv").load()


# --------------------------------------------------------------------------- missing tokens


def _token_export(tmp_path: Path) -> Path:
    """40 recent days; tokens in hrv/restingHR/ctlLoad, 'abc' in hrv on line 22."""
    import datetime as dt

    start = dt.date.today() - dt.timedelta(days=60)
    header = "date,restingHR,hrv,sleepSecs,readiness,ctl,ctlLoad,weight"
    rows = []
    hrv_tokens = ["n/a", "NaN", "null", "#N/A", "None", "-", "NA"]
    for i in range(40):
        hrv = hrv_tokens[i] if i < len(hrv_tokens) else str(55 + i % 6)
        if i == 20:
            hrv = "abc"  # line 22 (header is line 1)
        rhr = "NaN" if i in (30, 31) else str(48 + i % 4)
        load = "#N/A" if i == 35 else str(50 + i % 7)
        rows.append(f"{start + dt.timedelta(days=i)},{rhr},{hrv},{27000 + 60 * i},"
                    f"{60 + i % 9},{40 + i % 3},{load},NaN")
    return export(tmp_path, rows, header=header)


def test_missing_tokens_are_counted_per_column(tmp_path: Path) -> None:
    f = _token_export(tmp_path)
    result = IntervalsSource(f).load()
    tokens = {i.column: i for i in result.issues if hasattr(i, "count")}
    # weight is not read, so its NaN cells are not counted
    assert {c: i.count for c, i in tokens.items()} == {  # type: ignore[attr-defined]
        "hrv": 7, "restingHR": 2, "ctlLoad": 1}
    assert all(i.athlete_id == "i42" and severity_of(i) == "warning" for i in tokens.values())
    assert tokens["restingHR"].message == (
        "2 restingHR cell(s) spelled as missing ('NaN' x2): read as missing (resting_hr)")
    errors = [(i.line, i.column, i.message) for i in result.issues if severity_of(i) == "error"]
    assert errors == [(22, "hrv", "value 'abc' is not a number; left empty")]
    assert result.frame["hrv_ms"].isna().sum() == 8
    # ctlLoad '#N/A' with ctl present: a rest day as for an empty ctlLoad cell
    assert (result.frame["tss"] == 0).sum() == 1


def test_missing_tokens_and_abc_reach_the_runs_data_notes(tmp_path: Path) -> None:
    from veloready_pipeline.config import Settings
    from veloready_pipeline.ingest import data_notes_line, load_data, validate_ingested

    f = _token_export(tmp_path)
    settings = Settings()
    ingested = load_data(settings, data=str(f))
    assert ingested.source == "intervals"
    outcome = validate_ingested(ingested, settings)
    assert outcome.quarantined == {}
    notes = outcome.data_notes["i42"]
    assert {n["column"]: n["count"] for n in notes if n["kind"] == "missing_tokens"} == {
        "hrv": 7, "restingHR": 2, "ctlLoad": 1}
    masked = [n for n in notes if n["kind"] == "masked"]
    assert len(masked) == 1 and masked[0]["column"] == "hrv"
    row = masked[0]["rows"][0]
    assert (row["file"], row["line"]) == (str(f), 22) and "'abc'" in row["message"]
    counts = outcome.note_counts()
    assert (counts["missing_tokens"], counts["masked"], counts["dropped"]) == (10, 1, 0)
    assert "10 missing-value tokens" in data_notes_line(counts)
    assert len(outcome.clean) == 40
