"""intervals.icu wellness exports (the CSV the site downloads), one file per athlete.

The export has a ``date`` column (``YYYY-MM-DD``, already the athlete's local day)
followed by one column per wellness field; most cells are empty on most days, the
file may start with a UTF-8 byte-order mark, and athletes add custom fields of their
own. The athlete id comes from the file name: ``i12345_wellness.csv`` ->
``i12345`` (a file named just ``wellness.csv`` takes its folder's name).

Mapping (intervals.icu field -> canonical column):

=================  ===============  ===================================================
intervals.icu      canonical        rule
=================  ===============  ===================================================
``hrv``            ``hrv_ms``       rMSSD in ms, as is (``hrvSDNN`` is a different
                                    statistic and is *not* substituted)
``restingHR``      ``resting_hr``   bpm, as is
``sleepSecs``      ``sleep_hours``  / 3600
``sleepScore``     ``sleep_score``  0-100 device score, as is
``readiness``      ``recovery_score``  0-100 device score (Garmin/Oura/Whoop) as is;
                                    if *every* value of the file is <= 10 the file is
                                    taken to use a 0-10 scale and multiplied by 10
                                    (the notes say so)
``soreness``       ``soreness``     intervals.icu 1-4 scale, 1 = best (low soreness),
``fatigue``        ``fatigue``      4 = worst (extreme). Canonical is 0-100 with high =
``stress``         ``stress``       good, so ``100 * (4 - x) / 3``: 1 -> 100, 4 -> 0.
``mood``           ``mood``         (mood: 1 great ... 4 grumpy; same formula)
``ctlLoad``        ``tss``          the day's training load intervals.icu feeds into
                                    fitness (CTL); ``atlLoad`` when ``ctlLoad`` is empty;
                                    0 when both are empty but ``ctl`` is present (the
                                    site computed fitness for a day without load: a
                                    rest day); empty otherwise
``injury``         ``injury``       1-4 scale (1 none, 2 niggle, 3 poor, 4 injured). An
                                    event (1) is a day whose level reaches
                                    `INJURY_EVENT_LEVEL` when the previous recorded
                                    level was below it; other recorded days 0; days
                                    without a value stay empty
=================  ===============  ===================================================

The 1-4 scales follow intervals.icu's wellness form, where the first option is the
best one (sleep quality: 1 great ... 4 poor). ``ctl``, ``atl`` and ``rampRate`` are
not copied: the pipeline recomputes them from ``tss`` with its own constants.
``sleepQuality`` and the other standard fields (weight, SpO2, ...) have no canonical
column and are ignored; custom fields are listed per athlete in the notes. Values on
a 1-4 scale outside 1-4, and values that are not numbers, are reported with file and
line and left empty (errors, `ParseIssue`); a date that appears twice keeps its last
row and the earlier one is reported as superseded (a warning, `ResolvedIssue`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from veloready_pipeline.sources.base import ParseIssue, SourceResult
from veloready_pipeline.sources.common import (
    CsvTable,
    ResolvedIssue,
    finish_frame,
    is_missing,
    join_notes,
    missing_sensor_notes,
    parse_number,
    read_csv_table,
    with_athlete,
)

#: Columns intervals.icu itself writes in a wellness export (not custom fields).
STANDARD_FIELDS: frozenset[str] = frozenset({
    "date", "id", "weight", "restingHR", "hrv", "hrvSDNN", "menstrualPhase",
    "menstrualPhasePredicted", "kcalConsumed", "sleepSecs", "sleepScore", "sleepQuality",
    "avgSleepingHR", "soreness", "fatigue", "stress", "mood", "motivation", "injury",
    "spO2", "systolic", "diastolic", "hydration", "hydrationVolume", "readiness",
    "baevskySI", "bloodGlucose", "lactate", "bodyFat", "abdomen", "vo2max", "comments",
    "steps", "respiration", "locked", "updated", "ctl", "atl", "rampRate", "ctlLoad",
    "atlLoad", "sportInfo", "carbohydrates", "protein", "fatTotal",
})

#: Fields whose presence in a header (besides ``date``) marks an intervals.icu export.
SIGNATURE_FIELDS: frozenset[str] = frozenset({
    "restingHR", "hrv", "hrvSDNN", "sleepSecs", "sleepScore", "sleepQuality", "readiness",
    "ctlLoad", "atlLoad", "rampRate", "avgSleepingHR", "kcalConsumed", "spO2",
})

#: Direct copies: intervals.icu column -> (canonical column, divisor).
DIRECT: dict[str, tuple[str, float]] = {
    "hrv": ("hrv_ms", 1.0),
    "restingHR": ("resting_hr", 1.0),
    "sleepSecs": ("sleep_hours", 3600.0),
    "sleepScore": ("sleep_score", 1.0),
}

#: Subjective 1-4 fields (1 best) -> canonical 0-100 (high = good).
FOUR_POINT: dict[str, str] = {
    "soreness": "soreness", "fatigue": "fatigue", "stress": "stress", "mood": "mood",
}

#: Injury level from which a day counts as an injury event (2 = "niggle").
INJURY_EVENT_LEVEL = 2

_NAME_SUFFIX = re.compile(r"[_\-. ]*wellness.*$", re.IGNORECASE)


def four_point_to_score(level: float) -> float:
    """intervals.icu 1 (best) .. 4 (worst) -> canonical 0-100 with high = good."""
    return 100.0 * (4.0 - level) / 3.0


def athlete_id_for(path: Path) -> str:
    """``i12345_wellness.csv`` -> ``i12345``; ``wellness.csv`` -> its folder's name."""
    stem = _NAME_SUFFIX.sub("", path.stem).strip()
    return stem or path.resolve().parent.name


def looks_like_intervals(header: list[str]) -> bool:
    """True when a CSV header is an intervals.icu wellness export."""
    names = {h.strip().lstrip("\ufeff") for h in header}
    return "date" in names and len(names & SIGNATURE_FIELDS) >= 1


class IntervalsSource:
    """intervals.icu wellness CSV exports (mapping in the module docstring).

    Args:
        path: one export file or a folder of them (``*.csv``, one per athlete).
        athlete_id: override the id taken from the file name (single file only).
    """

    name = "intervals"

    def __init__(self, path: str | Path, athlete_id: str | None = None) -> None:
        self.path = Path(path)
        self.athlete_id = athlete_id

    def files(self) -> list[Path]:
        """The export files this source reads."""
        if not self.path.exists():
            raise FileNotFoundError(f"intervals: {self.path} does not exist")
        if self.path.is_dir():
            found = sorted(p for p in self.path.glob("*.csv") if p.is_file())
            if not found:
                raise FileNotFoundError(f"intervals: no .csv files in {self.path}")
            return found
        return [self.path]

    def load(self) -> SourceResult:
        files = self.files()
        if self.athlete_id and len(files) > 1:
            raise ValueError("intervals: athlete_id can only be given for a single file")
        records: list[dict[str, object]] = []
        issues: list[ParseIssue] = []
        remarks: dict[str, list[str]] = {}
        owners: dict[str, Path] = {}
        for f in files:
            athlete = self.athlete_id or athlete_id_for(f)
            if athlete in owners:
                raise ValueError(
                    f"intervals: {f.name} and {owners[athlete].name} both map to athlete "
                    f"{athlete!r}; rename one of them"
                )
            owners[athlete] = f
            table = read_csv_table(f)
            issues.extend(with_athlete(table.issues, athlete))
            if "date" not in table.header and "id" not in table.header:
                issues.append(ParseIssue(athlete, str(f), 1, "date",
                                         "no 'date' column: not an intervals.icu wellness "
                                         "export; file skipped"))
                continue
            recs, file_issues, notes = _read_export(table, athlete)
            records.extend(recs)
            issues.extend(file_issues)
            remarks[athlete] = notes
        if not records:
            raise ValueError(f"intervals: no usable rows in {len(files)} file(s) under "
                             f"{self.path}")
        frame = finish_frame(records)
        return SourceResult(frame=frame, issues=issues,
                            notes=join_notes(missing_sensor_notes(frame), remarks))


def _read_export(
    table: CsvTable, athlete: str
) -> tuple[list[dict[str, object]], list[ParseIssue], list[str]]:
    """Canonical records of one athlete's export, its issues and notes."""
    file = str(table.path)
    date_col = "date" if "date" in table.header else "id"
    issues: list[ParseIssue] = []
    notes: list[str] = []

    def number(row_line: int, column: str, raw: str) -> float:
        try:
            return parse_number(raw)
        except ValueError:
            issues.append(ParseIssue(athlete, file, row_line, column,
                                     f"value {raw!r} is not a number; left empty"))
            return math.nan

    by_day: dict[object, dict[str, object]] = {}
    injury_levels: list[tuple[object, float]] = []
    readiness_seen: list[float] = []
    for row in table.rows:
        v = row.values
        try:
            day = pd.Timestamp(str(v.get(date_col, "")).strip())
            if day is pd.NaT:
                raise ValueError
        except (ValueError, TypeError):
            issues.append(ParseIssue(athlete, file, row.line, date_col,
                                     f"date {v.get(date_col)!r} is not a date; row skipped"))
            continue
        day = day.tz_localize(None).normalize() if day.tzinfo else day.normalize()
        rec: dict[str, object] = {"athlete_id": athlete, "date": day, "_file": file,
                                  "_line": row.line}
        for col, (canon, div) in DIRECT.items():
            if col in v and not is_missing(v[col]):
                rec[canon] = number(row.line, col, v[col]) / div
        for col, canon in FOUR_POINT.items():
            if col in v and not is_missing(v[col]):
                level = number(row.line, col, v[col])
                if math.isnan(level):
                    continue
                if level not in (1.0, 2.0, 3.0, 4.0):
                    issues.append(ParseIssue(athlete, file, row.line, col,
                                             f"{col} {level:g} is outside intervals.icu's "
                                             "1-4 scale; left empty"))
                    continue
                rec[canon] = four_point_to_score(level)
        if "readiness" in v and not is_missing(v["readiness"]):
            r = number(row.line, "readiness", v["readiness"])
            if not math.isnan(r):
                rec["recovery_score"] = r
                readiness_seen.append(r)
        rec["tss"] = _daily_load(v, row.line, number)
        if "injury" in v and not is_missing(v["injury"]):
            level = number(row.line, "injury", v["injury"])
            if not math.isnan(level):
                if level not in (1.0, 2.0, 3.0, 4.0):
                    issues.append(ParseIssue(athlete, file, row.line, "injury",
                                             f"injury {level:g} is outside intervals.icu's "
                                             "1-4 scale; left empty"))
                else:
                    injury_levels.append((day, level))
        if day in by_day:
            prev = by_day[day]
            issues.append(ResolvedIssue(athlete, file, int(prev["_line"]), date_col,  # type: ignore[call-overload]
                                     f"date {day.date()} appears again at line {row.line}; "
                                     "this row is superseded"))
        by_day[day] = rec

    # Injury events: a day whose level reaches the event level from below.
    previous = 1.0
    events: dict[object, float] = {}
    for day, level in sorted(injury_levels, key=lambda t: t[0]):  # type: ignore[arg-type, return-value]
        events[day] = 1.0 if level >= INJURY_EVENT_LEVEL > previous else 0.0
        previous = level
    for day, flag in events.items():
        if day in by_day:
            by_day[day]["injury"] = flag

    if readiness_seen and max(readiness_seen) <= 10.0:
        for rec in by_day.values():
            if "recovery_score" in rec:
                rec["recovery_score"] = float(rec["recovery_score"]) * 10.0  # type: ignore[arg-type]
        notes.append("readiness is on a 0-10 scale in this export (all values <= 10): "
                     "multiplied by 10")
    custom = [h for h in table.header if h not in STANDARD_FIELDS and h]
    if custom:
        notes.append(f"custom fields not used: {', '.join(custom)}")
    if not injury_levels:
        notes.append("no injury entries (injury unknown)")
    return list(by_day.values()), issues, notes


def _daily_load(values: dict[str, str], line: int,
                number: Callable[[int, str, str], float]) -> float:
    """The day's TSS: ctlLoad, else atlLoad, else 0 when ctl exists (rest day)."""
    for col in ("ctlLoad", "atlLoad"):
        if col in values and not is_missing(values[col]):
            x = number(line, col, values[col])
            if not math.isnan(x):
                return float(x)
    if "ctl" in values and not is_missing(values["ctl"]):
        return 0.0
    return math.nan
