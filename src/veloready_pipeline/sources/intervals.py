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
``sleepScore``     ``sleep_score``  0-100 device score as is; 0-10 scores (see below)
                                    multiplied by 10
``readiness``      ``recovery_score``  0-100 device score (Garmin/Oura/Whoop) as is;
                                    0-10 scores multiplied by 10
``Ride_eftp``      ``eftp_w``       intervals.icu's estimated FTP (W) of that day, from
                                    ``Ride_eftp``, else another ``*Ride_eftp`` column
                                    (``VirtualRide_eftp``, ...); other sports' eFTP
                                    (running power) is not a cycling FTP and is not used
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

0-10 scores: a score column (``readiness``, ``sleepScore``) whose *every* value in the
file is <= 10 is taken to be on a 0-10 scale (some devices and imports write 0.6-10)
and multiplied by 10; the notes say so, with the count and the largest value.

The 1-4 scales follow intervals.icu's wellness form, where the first option is the
best one (sleep quality: 1 great ... 4 poor). ``ctl``, ``atl`` and ``rampRate`` are
not copied: the pipeline recomputes them from ``tss`` with its own constants.
``sleepQuality`` and the other standard fields (weight, SpO2, ...) have no canonical
column and are ignored; custom fields are listed per athlete in the notes. Values on
a 1-4 scale outside 1-4, and values that are not numbers, are reported with file and
line and left empty (errors, `ParseIssue`; validation masks them). Cells of the columns
read spelled as a documented missing-value token (``NaN``, ``n/a``, ``#N/A``, ...) are
read as missing and counted per athlete and column (`MissingTokenNote`). A date that
appears twice keeps the row intervals.icu updated last (the ``updated`` timestamp; rows
without one, or with equal ones, fall back to the later line) and the other is reported
as superseded (a warning, `ResolvedIssue`); the notes count the superseded rows per
athlete.

Folders: the export folder as intervals.icu writes it is accepted: ``wellness.csv``
(or ``i123_wellness.csv``) with ``activities.csv`` beside it. An activities export
(``start_date_local`` plus activity fields such as ``icu_training_load``) is recognised
and not read: the daily load comes from the wellness ``ctlLoad``; the notes say the file
was seen. A folder without CSV files of its own reads the athlete folders inside it
(``root/i123/wellness.csv``, ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pandas as pd

from veloready_pipeline.sources.base import ParseIssue, SourceResult
from veloready_pipeline.sources.common import (
    CsvTable,
    MissingTokenTally,
    ResolvedIssue,
    decode_file,
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
}

#: 0-100 scores that some exports write on a 0-10 scale (detected per file).
SCORES: dict[str, str] = {"readiness": "recovery_score", "sleepScore": "sleep_score"}

#: Columns of intervals.icu's *activities* export (one row per activity); a header with
#: ``start_date_local`` and one of these is an activities file, not wellness.
ACTIVITY_FIELDS: frozenset[str] = frozenset({
    "icu_training_load", "moving_time", "elapsed_time", "icu_eftp", "icu_ftp",
    "icu_average_watts", "icu_normalized_watts", "icu_joules",
})

_EFTP = re.compile(r"^(?P<sport>\w*Ride)_eftp$")

#: Subjective 1-4 fields (1 best) -> canonical 0-100 (high = good).
FOUR_POINT: dict[str, str] = {
    "soreness": "soreness", "fatigue": "fatigue", "stress": "stress", "mood": "mood",
}

#: Injury level from which a day counts as an injury event (2 = "niggle").
INJURY_EVENT_LEVEL = 2

_NAME_SUFFIX = re.compile(r"[_\-. ]*wellness.*$", re.IGNORECASE)
_ACTIVITIES_SUFFIX = re.compile(r"[_\-. ]*activities.*$", re.IGNORECASE)


def four_point_to_score(level: float) -> float:
    """intervals.icu 1 (best) .. 4 (worst) -> canonical 0-100 with high = good."""
    return 100.0 * (4.0 - level) / 3.0


def athlete_id_for(path: Path) -> str:
    """``i12345_wellness.csv`` -> ``i12345``; ``wellness.csv`` -> its folder's name.

    Activities exports follow the same rule (``i12345_activities.csv``,
    ``activities.csv``).
    """
    stem = _ACTIVITIES_SUFFIX.sub("", _NAME_SUFFIX.sub("", path.stem)).strip()
    return stem or path.resolve().parent.name


def looks_like_intervals(header: list[str]) -> bool:
    """True when a CSV header is an intervals.icu wellness export."""
    names = {h.strip().lstrip("\ufeff") for h in header}
    return "date" in names and len(names & SIGNATURE_FIELDS) >= 1


def looks_like_intervals_activities(header: list[str]) -> bool:
    """True when a CSV header is an intervals.icu activities export."""
    names = {h.strip().strip('"').lstrip("\ufeff") for h in header}
    return "start_date_local" in names and len(names & ACTIVITY_FIELDS) >= 1


def _header(path: Path) -> list[str]:
    """The header names of a CSV file (first non-blank line, BOM and quotes stripped)."""
    text, _ = decode_file(path)
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = max((",", ";", "\t"), key=first.count)
    return [h.strip().strip('"').lstrip("\ufeff") for h in first.split(delimiter)]


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

    def _csv_files(self) -> list[Path]:
        """Every CSV of the folder (or, without any, of its athlete sub-folders)."""
        if not self.path.exists():
            raise FileNotFoundError(f"intervals: {self.path} does not exist")
        if not self.path.is_dir():
            return [self.path]
        found = sorted(p for p in self.path.glob("*.csv") if p.is_file())
        if not found:
            found = sorted(p for p in self.path.glob("*/*.csv") if p.is_file())
        if not found:
            raise FileNotFoundError(f"intervals: no .csv files in {self.path} or its "
                                    "sub-folders")
        return found

    def _split(self) -> tuple[list[Path], list[Path]]:
        """(wellness files, activities files) of the path."""
        wellness: list[Path] = []
        activities: list[Path] = []
        for p in self._csv_files():
            (activities if looks_like_intervals_activities(_header(p)) else wellness).append(p)
        if not wellness:
            raise ValueError(
                f"intervals: {self.path} holds only activities exports "
                f"({', '.join(p.name for p in activities[:3])}); give the wellness export "
                "(wellness.csv) or its folder"
            )
        return wellness, activities

    def activity_files(self) -> list[Path]:
        """intervals.icu activities exports beside the wellness files (recognised, not read)."""
        return self._split()[1]

    def files(self) -> list[Path]:
        """The wellness export files this source reads."""
        return self._split()[0]

    def load(self) -> SourceResult:
        files, activity_files = self._split()
        if self.athlete_id and len(files) > 1:
            raise ValueError("intervals: athlete_id can only be given for a single file")
        records: list[dict[str, object]] = []
        issues: list[ParseIssue] = []
        remarks: dict[str, list[str]] = {}
        for f in activity_files:
            athlete = self.athlete_id or athlete_id_for(f)
            remarks.setdefault(athlete, []).append(
                f"{f.name}: an intervals.icu activities export beside the wellness file, "
                "not read (the daily load comes from the wellness ctlLoad)"
            )
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
            remarks.setdefault(athlete, []).extend(notes)
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
    return _ExportReader(table, athlete).read()


class _ExportReader:
    """One athlete's export read row by row into canonical records (one per day)."""

    def __init__(self, table: CsvTable, athlete: str) -> None:
        self.table = table
        self.athlete = athlete
        self.file = str(table.path)
        self.date_col = "date" if "date" in table.header else "id"
        self.issues: list[ParseIssue] = []
        self.notes: list[str] = []
        self.by_day: dict[object, dict[str, object]] = {}
        self.injury_levels: list[tuple[object, float]] = []
        self.scores_seen: dict[str, list[float]] = {col: [] for col in SCORES}
        self.eftp_cols = sorted((h for h in table.header if _EFTP.match(h)),
                                key=lambda h: (h != "Ride_eftp", table.header.index(h)))
        # Columns read into the canonical table (their missing-value tokens are counted).
        used: dict[str, str] = {
            **{col: canon for col, (canon, _) in DIRECT.items()}, **FOUR_POINT, **SCORES,
            **{col: "eftp_w" for col in self.eftp_cols}, "ctlLoad": "tss", "atlLoad": "tss",
            "injury": "injury",
        }
        self.used = {col: canon for col, canon in used.items() if col in table.header}
        self.tokens = MissingTokenTally()
        self.superseded = 0

    def issue(self, line: int, column: str, message: str) -> None:
        self.issues.append(ParseIssue(self.athlete, self.file, line, column, message))

    def number(self, row_line: int, column: str, raw: str) -> float:
        try:
            return parse_number(raw)
        except ValueError:
            self.issue(row_line, column, f"value {raw!r} is not a number; left empty")
            return math.nan

    def read(self) -> tuple[list[dict[str, object]], list[ParseIssue], list[str]]:
        for row in self.table.rows:
            day = self._day(row.values, row.line)
            if day is not None:
                self._keep(day, self._record(row.values, row.line, day))
        self._injury_events()
        self._rescale_scores()
        self._summary_notes()
        self.issues.extend(self.tokens.notes())
        return list(self.by_day.values()), self.issues, self.notes

    def _day(self, v: dict[str, str], line: int) -> pd.Timestamp | None:
        """The row's day (naive, normalised), None (and an issue) when unreadable."""
        try:
            day = pd.Timestamp(str(v.get(self.date_col, "")).strip())
            if day is pd.NaT:
                raise ValueError
        except (ValueError, TypeError):
            self.issue(line, self.date_col,
                       f"date {v.get(self.date_col)!r} is not a date; row skipped")
            return None
        return day.tz_localize(None).normalize() if day.tzinfo else day.normalize()

    def _record(self, v: dict[str, str], line: int, day: pd.Timestamp) -> dict[str, object]:
        """The canonical record of one readable row."""
        for col, canon in self.used.items():
            self.tokens.seen(self.athlete, self.file, col, v.get(col), into=canon)
        rec: dict[str, object] = {"athlete_id": self.athlete, "date": day, "_file": self.file,
                                  "_line": line}
        for col, (canon, div) in DIRECT.items():
            if col in v and not is_missing(v[col]):
                rec[canon] = self.number(line, col, v[col]) / div
        for col, canon in FOUR_POINT.items():
            level = self._level(v, line, col)
            if level is not None:
                rec[canon] = four_point_to_score(level)
        self._scores(v, line, rec)
        self._eftp(v, line, rec)
        rec["_updated"] = _updated(v.get("updated"))
        rec["tss"] = _daily_load(v, line, self.number)
        level = self._level(v, line, "injury")
        if level is not None:
            self.injury_levels.append((day, level))
            rec["_injury_level"] = level
        return rec

    def _level(self, v: dict[str, str], line: int, col: str) -> float | None:
        """A 1-4 scale value; None when empty, not a number or outside 1-4 (an issue)."""
        if col not in v or is_missing(v[col]):
            return None
        level = self.number(line, col, v[col])
        if math.isnan(level):
            return None
        if level not in (1.0, 2.0, 3.0, 4.0):
            self.issue(line, col,
                       f"{col} {level:g} is outside intervals.icu's 1-4 scale; left empty")
            return None
        return level

    def _scores(self, v: dict[str, str], line: int, rec: dict[str, object]) -> None:
        for col, canon in SCORES.items():
            if col in v and not is_missing(v[col]):
                r = self.number(line, col, v[col])
                if not math.isnan(r):
                    rec[canon] = r
                    self.scores_seen[col].append(r)

    def _eftp(self, v: dict[str, str], line: int, rec: dict[str, object]) -> None:
        for col in self.eftp_cols:
            if not is_missing(v.get(col)):
                eftp = self.number(line, col, v[col])
                if not math.isnan(eftp):
                    rec["eftp_w"] = eftp
                    return

    def _keep(self, day: pd.Timestamp, rec: dict[str, object]) -> None:
        """Store the day's record; a second row of the same day supersedes one of them."""
        if day in self.by_day:
            prev = self.by_day[day]
            # The row intervals.icu updated last wins; no/equal timestamps: the later line.
            new_wins = not (_updated_key(prev) > _updated_key(rec))
            kept, lost = (rec, prev) if new_wins else (prev, rec)
            why = ("updated later" if _updated_key(kept) != _updated_key(lost)
                   else "same or no 'updated' time; the later line wins")
            self.issues.append(ResolvedIssue(
                self.athlete, self.file, int(cast(int, lost["_line"])), self.date_col,
                f"date {day.date()} appears again at line {kept['_line']}, which is kept "
                f"({why}); this row is superseded",
            ))
            self.superseded += 1
            rec = kept
        self.by_day[day] = rec

    def _injury_events(self) -> None:
        """Injury events: a day whose level reaches the event level from below."""
        previous = 1.0
        events: dict[object, float] = {}
        kept_levels = sorted((day, float(cast(float, rec["_injury_level"])))
                             for day, rec in self.by_day.items() if "_injury_level" in rec)
        for day, level in kept_levels:  # only the rows kept (not superseded ones)
            events[day] = 1.0 if level >= INJURY_EVENT_LEVEL > previous else 0.0
            previous = level
        for day, flag in events.items():
            self.by_day[day]["injury"] = flag

    def _rescale_scores(self) -> None:
        for col, canon in SCORES.items():
            seen = self.scores_seen[col]
            if seen and max(seen) <= 10.0:
                for rec in self.by_day.values():
                    if canon in rec:
                        rec[canon] = float(cast(float, rec[canon])) * 10.0
                self.notes.append(
                    f"{col} is on a 0-10 scale in this export (all {len(seen)} values "
                    f"<= 10, largest {max(seen):g}): multiplied by 10 into {canon}")

    def _summary_notes(self) -> None:
        if self.superseded:
            self.notes.append(
                f"{self.superseded} row(s) superseded by another row of the same date (the "
                "one updated last is kept, each listed as a warning)")
        if self.eftp_cols:
            n_eftp = sum(1 for rec in self.by_day.values() if "eftp_w" in rec)
            self.notes.append(f"estimated FTP (eftp_w) from {' then '.join(self.eftp_cols)} "
                              f"on {n_eftp} day(s)")
        custom = [h for h in self.table.header
                  if h not in STANDARD_FIELDS and h not in self.eftp_cols and h]
        if custom:
            self.notes.append(f"custom fields not used: {', '.join(custom)}")
        if not self.injury_levels:
            self.notes.append("no injury entries (injury unknown)")


def _updated(raw: object) -> pd.Timestamp:
    """The row's ``updated`` time (UTC, naive), NaT when absent or unreadable."""
    if is_missing(raw):
        return pd.NaT
    try:
        ts = pd.Timestamp(str(raw).strip())
    except (ValueError, TypeError):
        return pd.NaT
    if ts is pd.NaT:
        return pd.NaT
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts


def _updated_key(rec: dict[str, object]) -> pd.Timestamp:
    when = rec.get("_updated")
    return when if isinstance(when, pd.Timestamp) and when is not pd.NaT else pd.Timestamp.min


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
