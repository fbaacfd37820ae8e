"""Shared source helpers: decoding, CSV rows with line numbers, numbers, finishing."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from veloready_pipeline.schema import CORE_COLUMNS
from veloready_pipeline.sources.common import (
    decode_file,
    finish_frame,
    join_notes,
    missing_sensor_notes,
    parse_number,
    read_csv_table,
)


@pytest.mark.parametrize(
    "raw",
    [
        "\ufeffdate,x\n2024-01-01,1\n".encode(),
        b"date,x\n2024-01-01,1\n",
        "date,x\n2024-01-01,1\n".encode("utf-16"),  # Python writes the BOM
    ],
)
def test_decode_file_handles_boms(tmp_path: Path, raw: bytes) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes(raw)
    text, issues = decode_file(f)
    assert text.startswith("date,x") and not issues


def test_decode_file_falls_back_to_cp1252_and_reports_the_line(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_bytes("athlete,date\nok,2024-01-01\nBjørn,2024-01-02\n".encode("cp1252"))
    text, issues = decode_file(f)
    assert "Bjørn" in text
    assert len(issues) == 1 and issues[0].line == 3 and "cp1252" in issues[0].message


def test_read_csv_table_keeps_physical_line_numbers(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        "date,note,x\n"
        "2024-01-01,plain,1\n"
        "\n"  # blank line 3
        '2024-01-02,"two\nlines",2\n'  # a quoted field spanning lines 4-5
        "2024-01-03,too,many,fields\n"  # line 6: more fields than the header
        "2024-01-04,short\n",  # line 7: trailing cell missing
        encoding="utf-8",
    )
    table = read_csv_table(f)
    assert table.header == ["date", "note", "x"]
    assert [r.line for r in table.rows] == [2, 4, 7]
    assert table.rows[1].values["note"] == "two\nlines"
    assert table.rows[2].values["x"] == ""
    assert [(i.line, "fields" in i.message) for i in table.issues] == [(6, True)]


def test_read_csv_table_sniffs_semicolons_and_strips_header(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("\ufeff date ; x \n2024-01-01;7,5\n", encoding="utf-8")
    table = read_csv_table(f)
    assert table.header == ["date", "x"]
    assert table.rows[0].values["x"] == "7,5"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("7,5", 7.5), (" 12 ", 12.0), ("-3.25", -3.25), (4, 4.0), (True, 1.0), ("1e2", 100.0)],
)
def test_parse_number_accepts(raw: object, expected: float) -> None:
    assert parse_number(raw) == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["", "NA", "n/a", "null", "-", None, float("nan")])
def test_parse_number_missing_is_nan(raw: object) -> None:
    assert math.isnan(parse_number(raw))


@pytest.mark.parametrize("raw", ["abc", "6O", "1,2,3", "inf", "52..3"])
def test_parse_number_rejects(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_number(raw)


def test_finish_frame_adds_required_columns_and_sorts() -> None:
    frame = finish_frame([
        {"athlete_id": "b", "date": pd.Timestamp("2024-01-02"), "hrv_ms": 50.0},
        {"athlete_id": "a", "date": pd.Timestamp("2024-01-03"), "hrv_ms": "61"},
        {"athlete_id": "a", "date": pd.Timestamp("2024-01-01")},
    ])
    assert set(CORE_COLUMNS) <= set(frame.columns)
    assert list(frame["athlete_id"]) == ["a", "a", "b"]
    assert list(frame["date"].dt.day) == [1, 3, 2]
    assert frame["hrv_ms"].dtype == "float64" and frame["tss"].isna().all()
    assert str(frame["date"].dtype) == "datetime64[ns]"
    assert not [c for c in frame.columns if c.startswith("_")]


def test_finish_frame_keeps_provenance_and_drops_other_private_columns() -> None:
    frame = finish_frame([
        {"athlete_id": "a", "date": "2024-01-02", "_file": "x.csv", "_line": 3, "_tmp": 1},
        {"athlete_id": "a", "date": "2024-01-01", "_file": "x.csv", "_line": 2, "_tmp": 1},
    ])
    assert list(frame["_line"]) == [2, 3] and str(frame["_line"].dtype) == "Int64"
    assert "_tmp" not in frame


def test_missing_sensor_notes_and_join() -> None:
    frame = finish_frame([
        {"athlete_id": "a", "date": pd.Timestamp("2024-01-01"), "hrv_ms": 50.0,
         "resting_hr": 50.0, "sleep_score": 80.0, "tss": 10.0, "recovery_score": 70.0},
        {"athlete_id": "b", "date": pd.Timestamp("2024-01-01"), "tss": 0.0,
         "best_power_60s": 400.0},
    ])
    notes = missing_sensor_notes(frame)
    assert notes["a"] == ["no power data"]
    assert "no HRV" in notes["b"] and "no power data" not in notes["b"]
    joined = join_notes(notes, {"b": ["custom fields not used: x"], "c": []})
    assert joined["b"].endswith("custom fields not used: x")
    assert "c" not in joined
