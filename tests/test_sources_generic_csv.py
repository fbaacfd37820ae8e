"""Generic CSV + YAML mapping: conversions, dates/time zones, layouts, bad rows."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from veloready_pipeline.sources.common import severity_of
from veloready_pipeline.sources.generic_csv import (
    DateSpec,
    FieldSpec,
    GenericCsvSource,
    apply_field,
    load_mapping,
    parse_duration_hours,
    parse_local_date,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "generic_csv"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def mapping(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "athlete": {"column": "who"},
        "date": {"column": "day"},
        "fields": {"hrv_ms": "rmssd", "tss": {"column": "load"}},
    }
    base.update(overrides)
    return base


# --------------------------------------------------------------------------- fixture


def test_fixture_export_reads_with_its_mapping() -> None:
    result = GenericCsvSource(FIXTURES / "mapping.yaml").load()
    frame = result.frame
    assert frame.groupby("athlete_id").size().to_dict() == {"anna": 136, "ben": 134, "cara": 19}
    assert not frame.duplicated(["athlete_id", "date"]).any()
    # The one hand-edited cell is reported with file, line and column, the row kept.
    assert [(i.athlete_id, Path(i.file).name, i.line, i.column, severity_of(i))
            for i in result.issues] == [("cara", "daily_export.csv", 283, "RMSSD ms", "error")]
    bad = frame[(frame["athlete_id"] == "cara") & (frame["date"] == "2024-01-12")].iloc[0]
    assert math.isnan(bad["hrv_ms"]) and bad["resting_hr"] == 50
    # Line 2 of the file: anna;2024-01-01 06:48;70;44;444;0,74;6,9;2;0;265;no;
    first = frame[(frame["athlete_id"] == "anna")].iloc[0]
    assert first["date"] == pd.Timestamp("2024-01-01")
    assert first["hrv_ms"] == pytest.approx(70.0)
    assert first["sleep_hours"] == pytest.approx(444 / 60)
    assert first["sleep_score"] == pytest.approx(74.0)
    assert first["recovery_score"] == pytest.approx(69.0)
    assert first["soreness"] == pytest.approx(75.0)  # 2 on a 5-is-worst scale
    assert first["tss"] == 0.0 and first["alcohol"] == 0.0
    # Provenance for validation: a value that breaks a range rule can be traced back.
    assert (Path(first["_file"]).name, first["_line"]) == ("daily_export.csv", 2)
    assert result.notes == {a: "no power data" for a in ("anna", "ben", "cara")}


def test_fixture_late_utc_readings_land_on_the_local_day() -> None:
    frame = GenericCsvSource(FIXTURES / "mapping.yaml").load().frame
    lines = (FIXTURES / "daily_export.csv").read_text(encoding="utf-8").splitlines()[1:]
    late = [ln.split(";") for ln in lines if ln.split(";")[1][11:13] in ("22", "23")]
    assert late, "the fixture should hold readings taken just after local midnight"
    for cells in late:
        utc_day = pd.Timestamp(cells[1][:10])
        row = frame[(frame["athlete_id"] == cells[0])
                    & (frame["date"] == utc_day + pd.Timedelta(days=1))]
        assert len(row) == 1, cells
        if cells[2] != "52..3":
            assert row.iloc[0]["hrv_ms"] == pytest.approx(float(cells[2].replace(",", ".")))


def test_fixture_kj_to_tss_uses_each_rows_ftp() -> None:
    frame = GenericCsvSource(FIXTURES / "mapping.yaml").load().frame
    row = frame[(frame["athlete_id"] == "anna") & (frame["date"] == "2024-01-02")].iloc[0]
    # anna;2024-01-02 05:34;...;1236;265;... -> 1236 kJ at FTP 265 W, IF 0.75
    assert row["tss"] == pytest.approx(1236 * 0.75 * 100 / (3.6 * 265))


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("raw", "spec", "expected"),
    [
        ("5400", {"convert": "seconds_to_hours"}, 1.5),
        ("90", {"convert": "minutes_to_hours"}, 1.5),
        ("7:30", {"convert": "duration_to_hours"}, 7.5),
        ("7h 30min", {"convert": "duration_to_hours"}, 7.5),
        ("6:45:36", {"convert": "duration_to_hours"}, 6.76),
        ("0,82", {"convert": "fraction_to_percent"}, 82.0),
        ("7", {"scale": [0, 10]}, 70.0),
        ("5", {"scale": [1, 5]}, 100.0),
        ("5", {"scale": [5, 1]}, 0.0),
        ("1", {"scale": [5, 1]}, 100.0),
        ("3", {"scale": [1, 4]}, 200 / 3),
        # One hour at FTP is 900 kJ at 250 W and, by definition, 100 TSS.
        ("900", {"convert": "kj_to_tss", "ftp_w": 250, "intensity_factor": 1.0}, 100.0),
        ("900", {"convert": "kj_to_tss", "ftp_w": 250}, 75.0),
        ("3", {"convert": "nonzero_to_flag"}, 1.0),
        ("0", {"convert": "nonzero_to_flag"}, 0.0),
        ("10", {"multiply": 2, "offset": 5}, 25.0),
        ("Yes", {"values": {"yes": 1, "no": 0}}, 1.0),
        ("0", {"values": {"yes": 1, "no": 0}}, 0.0),  # numbers pass through
        ("0.5", {"convert": "fraction_to_percent", "scale": [0, 50], "multiply": 0.5}, 50.0),
    ],
)
def test_apply_field_conversions(raw: str, spec: dict[str, object], expected: float) -> None:
    assert apply_field(raw, FieldSpec(column="c", **spec)) == pytest.approx(expected, abs=1e-3)


def test_apply_field_missing_is_nan_and_garbage_is_an_error() -> None:
    assert math.isnan(apply_field("", FieldSpec(column="c", scale=(0, 10))))
    with pytest.raises(ValueError, match="not one of"):
        apply_field("maybe", FieldSpec(column="c", values={"yes": 1, "no": 0}))
    with pytest.raises(ValueError):
        apply_field("lots", FieldSpec(column="c"))


def test_kj_to_tss_ftp_column_with_fallback() -> None:
    spec = FieldSpec(column="kj", convert="kj_to_tss", ftp_column="ftp", ftp_w=200,
                     intensity_factor=1.0)
    assert apply_field("900", spec, {"ftp": "250"}) == pytest.approx(100.0)
    assert apply_field("720", spec, {"ftp": ""}) == pytest.approx(100.0)  # 200 W fallback
    no_fallback = FieldSpec(column="kj", convert="kj_to_tss", ftp_column="ftp")
    with pytest.raises(ValueError, match="no FTP"):
        apply_field("900", no_fallback, {"ftp": ""})


@pytest.mark.parametrize("bad", ["7:3x", "7::30", "soon"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_hours(bad)


@pytest.mark.parametrize(
    ("raw", "spec", "expected"),
    [
        ("2024-03-05", {}, "2024-03-05"),
        ("05/03/2024", {"dayfirst": True}, "2024-03-05"),
        ("05.03.2024", {"format": "%d.%m.%Y"}, "2024-03-05"),
        # Zoned timestamp converted to the athlete's zone: 23:30 UTC is 00:30 in Berlin.
        ("2024-01-09T23:30:00Z", {"timezone": "Europe/Berlin"}, "2024-01-10"),
        # Without a target zone a zoned timestamp keeps its own wall-clock day.
        ("2024-01-09T23:30:00-05:00", {}, "2024-01-09"),
        # Naive UTC -> local: 22:30 UTC is 00:30 in Berlin in summer (UTC+2).
        ("2024-06-09 22:30", {"source_timezone": "UTC", "timezone": "Europe/Berlin"},
         "2024-06-10"),
        ("2024-06-09 21:30", {"source_timezone": "UTC", "timezone": "Europe/Berlin"},
         "2024-06-09"),
        # Naive local stays as is.
        ("2024-06-09 23:59", {"timezone": "Europe/Berlin"}, "2024-06-09"),
        ("2024-01-09 07:00 +0100", {"format": "%Y-%m-%d %H:%M %z",
                                     "timezone": "America/New_York"}, "2024-01-09"),
    ],
)
def test_parse_local_date(raw: str, spec: dict[str, object], expected: str) -> None:
    assert parse_local_date(raw, DateSpec(column="d", **spec)) == pd.Timestamp(expected)


@pytest.mark.parametrize(("raw", "spec"), [("", {}), ("yesterday", {}),
                                           ("2024-03-05", {"format": "%d.%m.%Y"})])
def test_parse_local_date_rejects(raw: str, spec: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parse_local_date(raw, DateSpec(column="d", **spec))


# --------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"fields": {"hrv": "rmssd"}}, "unknown canonical field"),
        ({"athlete": {"column": "who", "constant": "x"}}, "exactly one"),
        ({"athlete": {}}, "exactly one"),
        ({"fields": {"tss": {"column": "kj", "convert": "kj_to_tss"}}}, "ftp"),
        ({"fields": {"tss": {"column": "x", "scale": [3, 3]}}}, "equal ends"),
        ({"fields": {"tss": {"column": "x", "convert": "furlongs"}}}, "convert"),
        ({"date": {"column": "day", "timezone": "Mars/Olympus"}}, "time zone"),
        ({"date": {"column": "day", "source_timezone": "UTC"}}, "needs date.timezone"),
        ({"colour": "blue"}, "colour"),
        ({"fields": {}}, "at least one"),
    ],
)
def test_bad_mappings_name_the_key(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_mapping(mapping(**bad))


def test_mapping_file_errors_name_the_file(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "- just\n- a list\n")
    with pytest.raises(ValueError, match="m.yaml"):
        load_mapping(f)


# --------------------------------------------------------------------------- layouts


def test_one_file_per_athlete_from_filename(tmp_path: Path) -> None:
    data = tmp_path / "exports"
    data.mkdir()
    write(data / "rider-a_daily.csv", "day,rmssd,load\n2024-01-01,50,10\n2024-01-02,55,0\n")
    write(data / "rider-b_daily.csv", "day,rmssd,load\n2024-01-01,40,30\n")
    write(data / "README_daily.csv", "day,rmssd,load\n2024-01-01,1,1\n")
    m = mapping(athlete={"from_filename": r"^rider-(?P<athlete>\w+)_daily$"},
                files="exports/*_daily.csv")
    mfile = write(tmp_path / "mapping.yaml", yaml.safe_dump(m))
    result = GenericCsvSource(mfile).load()
    assert result.frame.groupby("athlete_id").size().to_dict() == {"a": 2, "b": 1}
    # The file that does not match the pattern is reported, not silently read or dropped.
    assert [(Path(i.file).name, "file skipped" in i.message) for i in result.issues] == [
        ("README_daily.csv", True)
    ]


def test_data_path_overrides_files_and_constant_athlete(tmp_path: Path) -> None:
    f = write(tmp_path / "one.csv", "day,rmssd,load\n2024-01-01,50,10\n")
    m = mapping(athlete={"constant": "solo"}, files="elsewhere/*.csv")
    result = GenericCsvSource(m, path=f).load()
    assert list(result.frame["athlete_id"]) == ["solo"]
    folder_result = GenericCsvSource(m, path=tmp_path).load()  # folder: *.csv inside
    assert len(folder_result.frame) == 1
    glob_result = GenericCsvSource(m, path=str(tmp_path / "o*.csv")).load()  # a glob
    assert len(glob_result.frame) == 1
    with pytest.raises(FileNotFoundError, match="no files match"):
        GenericCsvSource(m, path=str(tmp_path / "z*.csv")).load()


def test_bad_rows_are_reported_with_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "x.csv",
              "who,day,rmssd,load\n"
              "a,2024-01-01,50,10\n"
              "a,not-a-date,50,10\n"  # line 3: no day -> row skipped
              ",2024-01-03,50,10\n"  # line 4: no athlete -> row skipped
              "a,2024-01-04,fifty,10\n"  # line 5: bad value -> kept, left empty
              "a,2024-01-05,51,10,extra\n")  # line 6: too many fields -> skipped
    result = GenericCsvSource(mapping(), path=f).load()
    frame = result.frame
    assert list(frame["date"].dt.day) == [1, 4]
    assert math.isnan(frame.iloc[1]["hrv_ms"]) and frame.iloc[1]["tss"] == 10
    got = {(i.line, i.column) for i in result.issues}
    assert got == {(3, "day"), (4, "who"), (5, "rmssd"), (6, None)}
    assert all(i.file == str(f) and severity_of(i) == "error" for i in result.issues)


def test_same_day_rows_last_wins_and_is_reported(tmp_path: Path) -> None:
    f = write(tmp_path / "x.csv",
              "who,day,rmssd,load\na,2024-01-01,50,10\na,2024-01-01,60,20\n")
    result = GenericCsvSource(mapping(), path=f).load()
    assert len(result.frame) == 1 and result.frame.iloc[0]["hrv_ms"] == 60
    assert [(i.line, "superseded" in i.message, severity_of(i)) for i in result.issues] == [
        (2, True, "warning")
    ]


def test_same_day_is_resolved_by_time_not_file_order(tmp_path: Path) -> None:
    # Newest first, as Whoop writes it: the 07:40 row is the later one of 2 March.
    f = write(tmp_path / "x.csv",
              "who,day,rmssd,load\n"
              "a,2024-03-02 07:40,60,20\n"
              "a,2024-03-02 05:10,50,10\n"
              "a,2024-03-01 06:00,55,0\n")
    latest = GenericCsvSource(mapping(), path=f).load()
    assert latest.frame.set_index("date").loc["2024-03-02", "hrv_ms"] == 60
    [issue] = latest.issues
    assert (issue.line, severity_of(issue)) == (3, "warning")
    assert "superseded: x.csv:2" in issue.message and "07:40" in issue.message
    # One whole note ("; " separates the notes of an athlete).
    assert ("1 row(s) superseded on 1 day(s) with several rows (same_day keep: latest by "
            "day, each listed as a warning)") in latest.notes["a"].split("; ")
    earliest = GenericCsvSource(mapping(same_day="earliest"), path=f).load()
    assert earliest.frame.set_index("date").loc["2024-03-02", "hrv_ms"] == 50
    assert [i.line for i in earliest.issues] == [2]
    # Legacy key and the new one agree; a contradiction is named.
    both = GenericCsvSource(mapping(same_day={"keep": "combine"}), path=f).load()
    legacy = GenericCsvSource(mapping(combine_same_day=True), path=f).load()
    pd.testing.assert_frame_equal(both.frame, legacy.frame)
    assert both.frame.set_index("date").loc["2024-03-02", "tss"] == 30
    assert "2 rows combined into 1" in both.notes["a"]
    with pytest.raises(ValueError, match="combine_same_day.*contradicts"):
        load_mapping(mapping(combine_same_day=True, same_day="latest"))
    with pytest.raises(ValueError, match="same_day.keep"):
        load_mapping(mapping(same_day="newest"))


def test_same_day_by_another_column_and_open_rows(tmp_path: Path) -> None:
    """Whoop-like: day from the wake time, order by the cycle start; open cycle skipped."""
    f = write(tmp_path / "x.csv",
              "who,start,wake,rmssd\n"
              "a,2024-03-03 23:10,,70\n"  # open cycle: no wake time yet
              "a,2024-03-02 13:00,2024-03-02 14:00,40\n"  # a nap cycle, later start
              "a,2024-03-01 23:00,2024-03-02 07:00,60\n"
              "a,2024-03-01 02:00,2024-03-01 09:00,55\n")
    m = mapping(date={"column": "wake"}, same_day={"by": "start", "keep": "earliest"},
                fields={"hrv_ms": "rmssd"})
    result = GenericCsvSource(m, path=f).load()
    assert result.frame.set_index("date")["hrv_ms"].to_dict() == {
        pd.Timestamp("2024-03-01"): 55, pd.Timestamp("2024-03-02"): 60}
    by_line = {i.line: (i.column, severity_of(i), i.message) for i in result.issues}
    assert set(by_line) == {2, 3}
    assert by_line[2][:2] == ("wake", "warning") and "open cycle" in by_line[2][2]
    assert by_line[3][:2] == ("start", "warning") and "superseded" in by_line[3][2]
    assert "same_day keep: earliest by start" in result.notes["a"]


def test_ten_point_score_is_noted(tmp_path: Path) -> None:
    rows = "".join(f"a,2024-01-{d:02d},{5 + d % 4}\n" for d in range(1, 13))
    f = write(tmp_path / "x.csv", "who,day,ready\n" + rows)
    result = GenericCsvSource(mapping(fields={"recovery_score": "ready"}), path=f).load()
    assert "recovery_score values all lie within 0-10" in result.notes["a"]
    scaled = GenericCsvSource(
        mapping(fields={"recovery_score": {"column": "ready", "scale": [0, 10]}}), path=f
    ).load()
    assert "within 0-10" not in scaled.notes.get("a", "")


def test_combine_same_day_aggregates_per_field(tmp_path: Path) -> None:
    f = write(tmp_path / "x.csv",
              "who,day,rmssd,load,beer\n"
              "a,2024-01-01 07:00,50,10,0\n"
              "a,2024-01-01 18:00,,20,1\n"
              "a,2024-01-01 19:00,60,30,0\n")
    m = mapping(combine_same_day=True)
    m["fields"] = {"hrv_ms": "rmssd", "tss": "load", "alcohol": "beer"}
    result = GenericCsvSource(m, path=f).load()
    row = result.frame.iloc[0]
    assert len(result.frame) == 1 and not result.issues
    assert row["tss"] == 60 and row["hrv_ms"] == 55 and row["alcohol"] == 1


def test_missing_columns(tmp_path: Path) -> None:
    write(tmp_path / "good.csv", "who,day,rmssd,load\na,2024-01-01,50,10\n")
    write(tmp_path / "partial.csv", "who,day,load\nb,2024-01-01,10\n")
    write(tmp_path / "nodate.csv", "who,rmssd,load\nc,50,10\n")
    result = GenericCsvSource(mapping(), path=tmp_path).load()
    assert sorted(result.frame["athlete_id"]) == ["a", "b"]
    messages = {Path(i.file).name: (i.message, severity_of(i)) for i in result.issues}
    assert "hrv_ms is empty for this file" in messages["partial.csv"][0]
    assert messages["partial.csv"][1] == "warning"  # like a missing sensor
    assert "file skipped" in messages["nodate.csv"][0]
    assert messages["nodate.csv"][1] == "error"
    with pytest.raises(ValueError, match="rmsd.*appear in none"):
        GenericCsvSource(mapping(fields={"hrv_ms": "rmsd"}), path=tmp_path / "good.csv").load()


def test_cp1252_export_with_bom_free_header(tmp_path: Path) -> None:
    f = write(tmp_path / "x.csv", "who;day;rmssd;load\nBjørn;2024-01-01;50,5;10\n", "cp1252")
    result = GenericCsvSource(mapping(), path=f).load()
    assert list(result.frame["athlete_id"]) == ["Bjørn"]
    assert result.frame.iloc[0]["hrv_ms"] == 50.5
    assert len(result.issues) == 1 and "cp1252" in result.issues[0].message
    assert severity_of(result.issues[0]) == "warning"


def test_no_usable_rows_is_a_clear_error(tmp_path: Path) -> None:
    f = write(tmp_path / "x.csv", "who,day,rmssd,load\na,never,1,1\n")
    with pytest.raises(ValueError, match="no usable rows"):
        GenericCsvSource(mapping(), path=f).load()
    with pytest.raises(FileNotFoundError):
        GenericCsvSource(mapping(), path=tmp_path / "missing.csv").load()


def test_non_tss_load_maps_to_load_au_within_its_range(tmp_path: Path) -> None:
    f = write(tmp_path / "x.csv",
              "who,day,strain\na,2024-01-01,14.2\na,2024-01-02,35\na,2024-01-03,4.1\n")
    m = mapping(fields={"load_au": {"column": "strain", "range": [0, 21]}})
    result = GenericCsvSource(m, path=f).load()
    assert result.frame["load_au"].tolist()[::2] == [14.2, 4.1]
    assert math.isnan(result.frame["load_au"].iloc[1])
    [issue] = result.issues
    assert (issue.line, issue.column, severity_of(issue)) == (3, "strain", "error")
    assert "outside the mapped range 0 to 21" in issue.message
    with pytest.raises(ValueError, match="range.*low < high"):
        load_mapping(mapping(fields={"load_au": {"column": "strain", "range": [21, 0]}}))


# --------------------------------------------------------------------------- missing tokens


def _token_export(tmp_path: Path) -> tuple[Path, Path, dict[tuple[str, int], str]]:
    """Two riders, 40 recent days each; tokens in rmssd/load, 'abc' in one load cell."""
    import datetime as dt

    start = dt.date.today() - dt.timedelta(days=60)
    a_hrv = ["n/a", "NaN", "null", "#N/A", "None", "-", "NA", ""]  # 7 tokens + 1 blank
    cells: dict[tuple[str, int], str] = {}
    lines = ["who,day,rmssd,load,readiness"]
    for who in ("a", "b"):
        for i in range(40):
            hrv, load = str(50 + i % 7), str(40 + i % 5)
            if who == "a" and i < len(a_hrv):
                hrv = a_hrv[i]
            if who == "a" and i in (20, 21):
                load = "#N/A"
            if who == "b" and i == 5:
                hrv = "NaN"
            if who == "b" and i == 12:
                load = "abc"
            cells[(who, len(lines) + 1)] = load
            lines.append(f"{who},{start + dt.timedelta(days=i)},{hrv},{load},{60 + i % 9}")
    f = write(tmp_path / "daily.csv", "\n".join(lines) + "\n")
    m = tmp_path / "mapping.yaml"
    m.write_text(yaml.safe_dump(mapping(fields={
        "hrv_ms": "rmssd", "tss": {"column": "load"}, "recovery_score": "readiness"})))
    return f, m, cells


def test_missing_tokens_are_counted_per_athlete_and_column(tmp_path: Path) -> None:
    f, m, _ = _token_export(tmp_path)
    result = GenericCsvSource(m, path=f).load()
    tokens = {(i.athlete_id, i.column): i for i in result.issues if hasattr(i, "count")}
    assert {k: i.count for k, i in tokens.items()} == {  # type: ignore[attr-defined]
        ("a", "rmssd"): 7, ("a", "load"): 2, ("b", "rmssd"): 1}
    assert all(severity_of(i) == "warning" and i.file == str(f) for i in tokens.values())
    assert tokens[("a", "rmssd")].message == (
        "7 rmssd cell(s) spelled as missing ('n/a' x1, 'NaN' x1, 'null' x1, '#N/A' x1, "
        "'None' x1, '-' x1, 'NA' x1): read as missing (hrv_ms)")
    errors = [(i.athlete_id, i.line, i.column) for i in result.issues
              if severity_of(i) == "error"]
    assert errors == [("b", 54, "load")]  # 'abc' is a bad value, not a token
    a = result.frame[result.frame["athlete_id"] == "a"]
    assert a["hrv_ms"].isna().sum() == 8 and a["tss"].isna().sum() == 2


def test_missing_tokens_and_abc_reach_the_runs_data_notes(tmp_path: Path) -> None:
    from veloready_pipeline.config import Settings
    from veloready_pipeline.ingest import data_notes_line, load_data, validate_ingested

    f, m, cells = _token_export(tmp_path)
    assert cells[("b", 54)] == "abc"
    settings = Settings(source={"mapping": str(m)})
    ingested = load_data(settings, data=str(f))
    assert ingested.source == "generic_csv"
    outcome = validate_ingested(ingested, settings)
    assert outcome.quarantined == {}
    a_tokens = {n["column"]: n["count"] for n in outcome.data_notes["a"]
                if n["kind"] == "missing_tokens"}
    assert a_tokens == {"rmssd": 7, "load": 2}
    b_notes = outcome.data_notes["b"]
    assert [(n["column"], n["count"]) for n in b_notes if n["kind"] == "missing_tokens"] == [
        ("rmssd", 1)]
    masked = [n for n in b_notes if n["kind"] == "masked"]
    assert len(masked) == 1 and masked[0]["column"] == "load" and masked[0]["count"] == 1
    row = masked[0]["rows"][0]
    assert (row["file"], row["line"]) == (str(f), 54) and "'abc'" in row["message"]
    counts = outcome.note_counts()
    assert (counts["missing_tokens"], counts["masked"], counts["dropped"]) == (10, 1, 0)
    line = data_notes_line(counts)
    assert "1 masked values, 0 dropped rows" in line and "10 missing-value tokens" in line
    b = outcome.clean[outcome.clean["athlete_id"] == "b"]
    assert len(b) == 40 and b["tss"].isna().sum() == 1
