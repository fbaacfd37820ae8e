"""Shared source helpers: decoding, CSV rows with line numbers, numbers, finishing."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from veloready_pipeline.schema import CORE_COLUMNS, coerce_canonical, parse_days
from veloready_pipeline.sources.base import ParseIssue
from veloready_pipeline.sources.canonical import CanonicalFileSource
from veloready_pipeline.sources.common import (
    MISSING_TOKENS,
    MissingTokenNote,
    NoDataError,
    ResolvedIssue,
    decode_file,
    finish_frame,
    is_missing,
    join_notes,
    missing_sensor_notes,
    missing_token_counts,
    missing_token_notes,
    parse_number,
    read_csv_table,
    with_athlete,
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


# --------------------------------------------------------------------------- missing tokens


DOCUMENTED_TOKENS = ["", "n/a", "NA", "NaN", "null", "None", "#N/A", "-", "--", "?", "nil",
                     "N.A.", "<NA>", "#NA", "-nan"]


@pytest.mark.parametrize("token", DOCUMENTED_TOKENS)
def test_documented_missing_tokens_are_missing(token: str) -> None:
    assert is_missing(token) and is_missing(f"  {token} ")
    assert math.isnan(parse_number(token))


@pytest.mark.parametrize("text", ["abc", "0", "none of it", "#VALUE!", "n/a-ms", "NaNa"])
def test_other_text_is_not_a_missing_token(text: str) -> None:
    assert not is_missing(text)


def test_missing_token_list_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Missing values", 1)[1].split("\n#", 1)[0]
    for token in MISSING_TOKENS - {""}:
        assert f"`{token}`" in section.lower(), token


def test_missing_token_counts_and_notes_per_athlete_and_column() -> None:
    assert missing_token_counts(["n/a", "NaN", "", "5", "n/a", None]) == {"n/a": 2, "NaN": 1}
    raw = pd.DataFrame({"athlete_id": ["a", "a", "b", "b"],
                        "hrv_ms": ["n/a", "#N/A", "50", ""],
                        "tss": ["null", "1", "NaN", "abc"]}, dtype="string")
    notes = missing_token_notes(raw, ["hrv_ms", "tss"], "f.csv")
    got = {(n.athlete_id, n.column, n.count) for n in notes}
    assert got == {("a", "hrv_ms", 2), ("a", "tss", 1), ("b", "tss", 1)}
    assert all(isinstance(n, MissingTokenNote) and n.severity == "warning" for n in notes)
    [a_hrv] = [n for n in notes if (n.athlete_id, n.column) == ("a", "hrv_ms")]
    assert a_hrv.message == "2 hrv_ms cell(s) spelled as missing ('n/a' x1, '#N/A' x1): read " \
                            "as missing"


def test_with_athlete_keeps_the_kind_and_its_fields() -> None:
    issues = [MissingTokenNote(None, "f", None, "x", "m", count=3),
              ResolvedIssue(None, "f", 2, None, "superseded"), ParseIssue(None, "f", 3, None, "e")]
    out = with_athlete(issues, "a")
    assert [type(i) for i in out] == [type(i) for i in issues]
    assert all(i.athlete_id == "a" for i in out) and out[0].count == 3


# --------------------------------------------------------------------------- dates


def test_parse_days_normalises_mixed_offsets_row_by_row() -> None:
    raw = pd.Series(["2026-01-01T23:30:00-05:00", "2026-01-02T07:00:00+02:00", "abc", None,
                     "2026-01-03", "2026-01-04 06:00Z", "2026-01-05T01:00:00.5+0100"],
                    dtype="string")
    days = parse_days(raw)
    assert [None if pd.isna(d) else f"{d:%Y-%m-%d}" for d in days] == [
        "2026-01-01", "2026-01-02", None, None, "2026-01-03", "2026-01-04", "2026-01-05"]
    assert str(days.dtype) == "datetime64[ns]"
    frame = coerce_canonical(pd.DataFrame({"athlete_id": ["a", "b"], "date": [
        "2026-03-01T08:00:00+01:00", "2026-03-01T08:00:00+02:00"]}))
    assert "_coerce_errors" not in frame and frame["date"].notna().all()


def test_canonical_csv_with_one_athlete_in_another_offset(tmp_path: Path) -> None:
    path = tmp_path / "daily.csv"
    lines = ["athlete_id,date,recovery_score"]
    lines += [f"a,2026-01-{d:02d}T07:00:00+01:00,70" for d in range(1, 11)]
    lines += [f"b,2026-01-{d:02d}T07:00:00-05:00,60" for d in range(1, 11)]
    lines += [f"c,2026-01-{d:02d}T07:00:00{'+01:00' if d < 6 else '+02:00'},60"
              for d in range(1, 11)]
    path.write_text("\n".join(lines) + "\n")
    result = CanonicalFileSource(path).load()
    assert result.frame["date"].notna().all() and len(result.frame) == 30
    assert "_coerce_errors" not in result.frame
    [note] = result.issues
    assert note.athlete_id == "c" and note.severity == "warning"
    assert note.message.startswith("dates carry 2 different UTC offsets (+01:00 x5, +02:00 x5)")


# --------------------------------------------------------------------------- empty input


@pytest.mark.parametrize("content", ["", "\n  \n", "athlete_id,date,recovery_score\n"])
def test_empty_canonical_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(NoDataError, match=f"{path}.*(empty|no data rows)"):
        CanonicalFileSource(path).load()
    assert issubclass(NoDataError, ValueError)
