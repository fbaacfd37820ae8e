"""Data notes reach every place a person looks: closing line, summary rows, report."""

from __future__ import annotations

from pathlib import Path

from veloready_pipeline.ingest import data_notes_line
from veloready_pipeline.report import build_report
from veloready_pipeline.summary import annotate_rows
from veloready_pipeline.validation import NOTE_KINDS, data_notes_markdown

NOTES = {
    "a1": [
        {"kind": "masked", "count": 2, "message": "2 value(s) masked by rule "
         "expect_column_values_to_be_between on sleep_hours", "column": "sleep_hours",
         "rule": "expect_column_values_to_be_between", "action": "masked",
         "rows": [{"date": "2024-05-01", "value": 19.5, "file": "w.csv", "line": 952},
                  {"date": "2024-07-01", "value": 19.0, "file": "w.csv", "line": 1077}]},
        {"kind": "source", "count": 1, "message": "row superseded by line 15"},
    ],
    "gappy": [{"kind": "gap", "count": 1, "message": "99 day(s) without data in 11 gap(s); "
               "longest 9 day(s) between 2026-01-01 and 2026-01-11"}],
}
COUNTS = {"masked": 2, "source": 1, "gap": 1}


def test_closing_line_counts_every_kind() -> None:
    line = data_notes_line(COUNTS)
    assert line.startswith("2 masked values, 0 dropped rows, 1 source notes")
    assert "1 gap notes" in line and "0 rows outside the window" in line


def test_summary_rows_carry_counts_and_a_skipped_row_names_its_gaps() -> None:
    rows = [{"athlete_id": "a1", "family": "recovery", "status": "registered", "reason": "ok"},
            {"athlete_id": "gappy", "family": "recovery", "status": "skipped",
             "reason": "too little history: 0 labelled days < 90"},
            {"athlete_id": "none", "family": "recovery", "status": "registered", "reason": "ok"}]
    annotate_rows(rows, NOTES)
    assert rows[0]["data_notes"] == {"masked": 2, "source": 1} and rows[0]["reason"] == "ok"
    assert rows[1]["reason"] == ("too little history: 0 labelled days < 90 (data: 99 day(s) "
                                 "without data in 11 gap(s); longest 9 day(s) between "
                                 "2026-01-01 and 2026-01-11)")
    assert rows[2]["data_notes"] == {}


def test_markdown_lists_each_masked_row() -> None:
    md = data_notes_markdown(COUNTS, NOTES)
    assert md.startswith("# Data notes")
    assert "| " + " | ".join(NOTE_KINDS) + " |" in md
    assert "  - 2024-05-01 `sleep_hours` = 19.5 (w.csv:952)" in md
    assert "  - 2024-07-01 `sleep_hours` = 19 (w.csv:1077)" in md
    assert "## gappy" in md


def test_evaluation_report_has_the_data_notes(tmp_path: Path) -> None:
    summary = {"flow_run_id": "r1", "families": [], "counts": {}, "rows": [],
               "data_notes": NOTES, "data_note_counts": COUNTS}
    text = build_report(summary, tmp_path)["markdown"].read_text()
    assert "## Data notes" in text and "### a1" in text and "(w.csv:952)" in text
