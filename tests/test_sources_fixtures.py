"""The committed source fixtures: exactly what their generator writes, and what the
sources make of the real-export-shaped ones (issue 16: Whoop cycles newest first with
open cycles, a long intervals.icu history with late sensors, impossible values, a 0-10
sleep score and Ride_eftp, an intervals.icu export folder with activities.csv)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from veloready_pipeline.config import SourceSettings
from veloready_pipeline.sources import detect_source_name, make_source
from veloready_pipeline.sources.common import severity_of
from veloready_pipeline.validation import validate_frame

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_fixtures_are_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_fixtures", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    written = module.write_all(tmp_path)
    assert len(written) == 10
    for path in written:
        committed = FIXTURES / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} differs from what make_fixtures.py writes; regenerate it"
        )


def _load(path: Path, mapping: Path | None = None):  # type: ignore[no-untyped-def]
    cfg = SourceSettings(name="auto", path=str(path),
                         mapping=None if mapping is None else str(mapping))
    return make_source(cfg).load()


def _whoop_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(enumerate(csv.DictReader(fh), start=2))


@pytest.mark.parametrize("person,cycles,days,open_rows,superseded",
                         [("alex", 157, 149, 2, 6), ("bea", 146, 138, 3, 5)])
def test_whoop_cycles_newest_first(person: str, cycles: int, days: int, open_rows: int,
                                   superseded: int) -> None:
    """Open cycles are skipped with a warning each; same-date cycles keep the latest wake."""
    result = _load(FIXTURES / "whoop", FIXTURES / "whoop" / "mapping.yaml")
    frame = result.frame[result.frame["athlete_id"] == person].set_index("date")
    path = FIXTURES / "whoop" / f"{person}_physiological_cycles.csv"
    rows = _whoop_rows(path)
    assert len(rows) == cycles and len(frame) == days
    mine = [i for i in result.issues if i.athlete_id == person]
    assert all(severity_of(i) == "warning" and i.file == str(path) for i in mine)
    # Every row that is not in the frame is listed, by line, with its reason.
    empty = [line for line, r in rows if not r["Wake onset"]]
    assert len(empty) == open_rows and empty[0] == 2  # the newest cycle is still open
    assert sorted(i.line for i in mine if "open cycle" in i.message) == empty
    by_day: dict[str, list[tuple[str, int]]] = {}
    for line, r in rows:
        if r["Wake onset"]:
            by_day.setdefault(r["Wake onset"][:10], []).append((r["Wake onset"], line))
    lost = sorted(line for group in by_day.values() if len(group) > 1
                  for _, line in sorted(group)[:-1])
    assert len(lost) == superseded
    assert sorted(i.line for i in mine if "superseded" in i.message) == lost
    assert len(mine) == open_rows + superseded
    # The kept row of each such day is the latest wake (file order would keep the
    # earlier, newest-first file's *later* line: the short first sleep).
    by_line = dict(rows)
    for day, group in by_day.items():
        if len(group) > 1:
            kept = by_line[max(group)[1]]
            assert frame.loc[pd.Timestamp(day), "hrv_ms"] == float(
                kept["Heart rate variability (ms)"])
            assert frame.loc[pd.Timestamp(day), "recovery_score"] == float(
                kept["Recovery score %"])
    assert frame["load_au"].between(0, 21).all()
    assert (f"{superseded} row(s) superseded on {superseded} day(s) with several rows "
            "(same_day keep: latest by Wake onset, each listed as a warning)"
            ) in result.notes[person].split("; ")
    assert "training load as load_au (not TSS)" in result.notes[person]
    outcome = validate_frame(result.frame, result.issues)
    assert person not in outcome.quarantined


def test_long_intervals_history() -> None:
    """3 years, sensors starting late, 0-10 sleepScore, Ride_eftp, 4 impossible values."""
    folder = FIXTURES / "intervals_long"
    assert detect_source_name(str(folder)) == "intervals"
    result = _load(folder)
    frame = result.frame.set_index("date")
    assert len(frame) == 1100 and set(frame["athlete_id"]) == {"i3001"}
    assert not result.issues
    notes = result.notes["i3001"]
    assert "sleepScore is on a 0-10 scale in this export" in notes
    assert "estimated FTP (eftp_w) from Ride_eftp on 785 day(s)" in notes
    assert "custom fields not used: Ride_wPrime" in notes
    assert frame["sleep_score"].dropna().between(6, 100).all()
    assert frame["sleep_score"].max() > 80  # 0-100 now, not 0-10
    assert frame["eftp_w"].dropna().between(200, 320).all()
    # Late sensors: each column starts where the export starts recording it.
    first = {c: frame[c].first_valid_index() for c in ("resting_hr", "sleep_hours",
                                                       "recovery_score", "hrv_ms")}
    assert first == {"resting_hr": pd.Timestamp("2022-01-01"),
                     "sleep_hours": pd.Timestamp("2022-10-28"),
                     "recovery_score": pd.Timestamp("2023-08-24"),
                     "hrv_ms": pd.Timestamp("2024-03-11")}
    # The impossible values reach validation with their file and line, unclipped.
    bad = {("sleep_hours", 952): 70200 / 3600, ("resting_hr", 1012): 300.0,
           ("hrv_ms", 1042): 999.0, ("sleep_hours", 1077): 68400 / 3600}
    by_line = result.frame.set_index("_line")
    for (col, line), value in bad.items():
        assert by_line.loc[line, col] == pytest.approx(value)
        assert by_line.loc[line, "_file"].endswith("i3001_wellness.csv")
    outcome = validate_frame(result.frame, result.issues)
    shown = repr(outcome.quarantined.get("i3001")) + repr(outcome.warnings.get("i3001"))
    for col, _line in bad:
        assert col in shown


def test_intervals_export_folder_with_activities() -> None:
    folder = FIXTURES / "intervals_export" / "i2001"
    assert detect_source_name(str(folder)) == "intervals"
    assert detect_source_name(str(folder.parent)) == "intervals"  # one folder per athlete
    for path in (folder, folder.parent):
        result = _load(path)
        assert result.frame.groupby("athlete_id").size().to_dict() == {"i2001": 140}
        assert not result.issues
        assert ("activities.csv: an intervals.icu activities export beside the wellness "
                "file, not read (the daily load comes from the wellness ctlLoad)"
                ) in result.notes["i2001"].split("; ")
    outcome = validate_frame(result.frame, result.issues)
    assert not outcome.quarantined


def _whoop_expected(person: str) -> tuple[list[int], list[int]]:
    """Lines of ``person``'s open cycles (no wake time) and of the superseded cycles
    (not the latest wake of their date), read straight from the file."""
    rows = _whoop_rows(FIXTURES / "whoop" / f"{person}_physiological_cycles.csv")
    empty = [line for line, r in rows if not r["Wake onset"]]
    by_day: dict[str, list[tuple[str, int]]] = {}
    for line, r in rows:
        if r["Wake onset"]:
            by_day.setdefault(r["Wake onset"][:10], []).append((r["Wake onset"], line))
    lost = sorted(line for group in by_day.values() if len(group) > 1
                  for _, line in sorted(group)[:-1])
    return empty, lost


def _ingest(path: Path, mapping: Path | None = None):  # type: ignore[no-untyped-def]
    """Load and validate through the run's own path (settings, window, tolerances)."""
    from veloready_pipeline.config import Settings
    from veloready_pipeline.ingest import load_data, validate_ingested

    settings = Settings(source={"mapping": None if mapping is None else str(mapping)})
    ingested = load_data(settings, data=str(path))
    return ingested, validate_ingested(ingested, settings)


def test_whoop_through_the_pipeline_lists_every_skipped_row() -> None:
    """No one withheld; each open and each superseded cycle is a data note by line."""
    _, outcome = _ingest(FIXTURES / "whoop", FIXTURES / "whoop" / "mapping.yaml")
    assert outcome.quarantined == {} and set(outcome.clean["athlete_id"]) == {"alex", "bea"}
    for person in ("alex", "bea"):
        empty, lost = _whoop_expected(person)
        listed = {n["line"]: n["message"] for n in outcome.data_notes[person]
                  if n["kind"] == "source"}
        assert sorted(listed) == sorted(empty + lost)
        assert all("open cycle" in listed[line] for line in empty)
        assert all("superseded" in listed[line] for line in lost)
        adapter = [n["message"] for n in outcome.data_notes[person] if n["kind"] == "adapter"]
        assert (f"{len(lost)} row(s) superseded on {len(lost)} day(s) with several rows "
                "(same_day keep: latest by Wake onset, each listed as a warning)") in adapter


def test_intervals_export_folder_through_the_pipeline() -> None:
    ingested, outcome = _ingest(FIXTURES / "intervals_export" / "i2001")
    assert ingested.source == "intervals"
    assert outcome.quarantined == {} and set(outcome.clean["athlete_id"]) == {"i2001"}
    adapter = [n["message"] for n in outcome.data_notes["i2001"] if n["kind"] == "adapter"]
    assert any(m.startswith("activities.csv: an intervals.icu activities export") for m in adapter)


@pytest.mark.slow
@pytest.mark.parametrize(
    "path,mapping,source,athletes",
    [
        (FIXTURES / "whoop", FIXTURES / "whoop" / "mapping.yaml", "generic_csv",
         {"alex", "bea"}),
        (FIXTURES / "intervals_export" / "i2001", None, "intervals", {"i2001"}),
        (FIXTURES / "intervals_long", None, "intervals", {"i3001"}),
    ],
    ids=["whoop", "intervals_export", "intervals_long"],
)
def test_real_shaped_exports_train(prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   path: Path, mapping: Path | None, source: str,
                                   athletes: set[str]) -> None:
    """The weekly flow trains a recovery model for each person of each export, none is
    withheld, and the summary lists every skipped row and masked value by line."""
    import json

    from flows.weekly_training import weekly_training
    from veloready_pipeline.config import load_settings

    monkeypatch.setenv("VELOREADY_HOME", str(tmp_path))
    monkeypatch.setenv("VELOREADY_TUNING__N_TRIALS", "3")
    settings = load_settings(None, source={"mapping": None if mapping is None else str(mapping)})
    out = tmp_path / "summary.json"
    weekly_training(settings=settings, data=str(path), families=["recovery"],
                    summary_json=str(out), progress=False)
    summary = json.loads(out.read_text())
    assert summary["source"] == source and not summary["quarantined"]
    rows = {r["athlete_id"]: r for r in summary["rows"] if r["family"] == "recovery"}
    assert set(rows) == athletes
    for aid, rec in rows.items():
        assert rec["status"] in ("registered", "gate_failed"), (aid, rec["reason"])
        assert rec["metrics"]["rmse"] > 0
        notes = summary["data_notes"][aid]
        if source == "generic_csv":  # Whoop: open/superseded cycles; load from Day Strain
            empty, lost = _whoop_expected(aid)
            assert sorted(n["line"] for n in notes if n["kind"] == "source") == sorted(
                empty + lost)
            assert any("training load from load_au" in n for n in rec["notes"]), rec["notes"]
        if aid == "i3001":  # the four impossible values, each masked and listed by line
            masked = {(n["column"], r["line"]) for n in notes if n["kind"] == "masked"
                      for r in n["rows"]}
            assert masked == {("sleep_hours", 952), ("resting_hr", 1012), ("hrv_ms", 1042),
                              ("sleep_hours", 1077)}
