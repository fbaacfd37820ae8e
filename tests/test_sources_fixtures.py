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


def _train(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    import json

    from typer.testing import CliRunner

    from veloready_pipeline.cli import app

    summary = tmp_path / "summary.json"
    env = {"VELOREADY_HOME": str(tmp_path), "VELOREADY_TUNING__N_TRIALS": "3"}
    result = CliRunner().invoke(app, ["train", *args, "--families", "recovery",
                                      "--summary-json", str(summary)], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(summary.read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,source,athletes",
    [
        (["--data", str(FIXTURES / "whoop"), "--mapping", str(FIXTURES / "whoop" / "mapping.yaml")],
         "generic_csv", {"alex", "bea"}),
        (["--data", str(FIXTURES / "intervals_export" / "i2001")], "intervals", {"i2001"}),
    ],
    ids=["whoop", "intervals_export"],
)
def test_real_shaped_exports_train(prefect_api, tmp_path: Path, args: list[str], source: str,
                                   athletes: set[str]) -> None:
    """Each person of the export gets a trained recovery model (none withheld)."""
    summary = _train(tmp_path, *args)
    assert summary["source"] == source and not summary["quarantined"]
    rows = {r["athlete_id"]: r for r in summary["rows"] if r["family"] == "recovery"}
    assert set(rows) == athletes
    for aid, rec in rows.items():
        assert rec["status"] in ("registered", "gate_failed"), (aid, rec["reason"])
        assert rec["metrics"]["rmse"] > 0
        if source == "generic_csv":  # Whoop Day Strain: the load features use load_au
            assert any("training load from load_au" in n for n in rec["notes"]), rec["notes"]
