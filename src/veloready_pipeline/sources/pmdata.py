"""PMData (Thambawita et al., MMSys 2020): the per-participant folder layout.

Layout read (per participant ``pXX/``; any file may be missing)::

    pmsys/wellness.csv              effective_time_frame, fatigue, mood, readiness,
                                    sleep_duration_h, sleep_quality, soreness,
                                    soreness_area, stress
    pmsys/srpe.csv                  end_date_time, activity_names, perceived_exertion,
                                    duration_min
    pmsys/injury.csv                effective_time_frame, injuries ({} or a dict
                                    body part -> 'minor' | 'major')
    fitbit/sleep_score.csv          timestamp, ..., overall_score, ..., resting_heart_rate
    fitbit/resting_heart_rate.json  [{"dateTime": "YYYY-MM-DD 00:00:00",
                                      "value": {"value": bpm, ...}}, ...]

The root may be the dataset folder (``p01`` .. ``p16`` inside) or one participant's
folder. The athlete id is the folder name (``p01``).

Days: PMSys and Fitbit-log timestamps are UTC; each is converted to the participants'
zone (`PMDATA_TIMEZONE`, the data were collected in Norway) and its *local calendar
day* is the row's date. The Fitbit daily resting-HR file already holds calendar days.
Every day with any data (a wellness report, a sleep log, a resting-HR reading, a
session, an injury report) is a row, so a day with Fitbit data but no wellness report
still counts.

Mapping (PMSys wellness answers are 1-5 with 5 the best answer: fatigue 5 = very
fresh, soreness 5 = not sore, stress 5 = relaxed, mood 5 = very good; checked on the
data: each correlates positively with readiness for the median participant):

- ``readiness`` (0-10) x 10 -> ``recovery_score`` (the recovery target for PMData);
- ``fatigue``, ``mood``, ``soreness``, ``stress``: ``(x - 1) / 4 * 100`` -> 0-100 with
  high = good, the canonical orientation;
- ``sleep_duration_h`` -> ``sleep_hours``; ``sleep_quality`` has no canonical column;
- Fitbit ``overall_score`` -> ``sleep_score`` (the main sleep of the day: the log with
  the highest ``duration_score`` when there are several);
- Fitbit daily resting HR -> ``resting_hr``; on days without a JSON reading the
  ``resting_heart_rate`` of that day's sleep log is used (both are Fitbit's estimate:
  they agree to ~1 bpm on average on days having both); JSON readings of 0 are
  Fitbit's "no reading" and count as missing;
- session RPE x minutes summed over the local day of the session's *start*
  (end - duration) -> ``session_load``; ``tss = session_load * TSS_PER_SRPE_AU``. For a
  participant with any logged session, days without one are rest days (0), as usual
  for session-RPE load; with no session at all, load stays empty;
- injury reports -> ``injury`` = 1 on the local day of a report naming a body part no
  report of the preceding `INJURY_RECURRENCE_DAYS` days named, or naming it with a
  higher severity than any of them (minor -> major); 0 on every other day of a
  participant who filed reports (the weekly questionnaire covers the days between
  reports); empty for a participant without an injury file. Parts named in the first
  report count as new. A new injury is dated by its *report*, which for weekly
  reporters can be days after it started;
- no HRV and no power: PMData has neither (the notes say so per participant).

Everything left out is reported with file and line (JSON entries by index). Errors
(`ParseIssue`: the value could not be read) are unparseable timestamps, numbers or
injury dicts, answers outside their scale (other than 0), and sessions missing one of
RPE and duration. Warnings (`ResolvedIssue`: this source settled it) are all-zero
wellness forms (every answer 0: an empty submission) and single answers of 0 on a 1-5
scale (PMSys's "unanswered"), runs of at least `READINESS_ZERO_RUN` consecutive
readiness answers of 0 (a slider left at its default; one participant did so for two
months), earlier same-day wellness reports superseded by a later one (re-submissions
are corrections, minutes apart), secondary sleep logs (naps), sleep scores of 0, and
empty session entries (neither RPE nor duration). Cells of the columns read spelled as a
documented missing-value token (``NaN``, ``n/a``, ``#N/A``, ...) are read as missing and
counted per participant and column (`MissingTokenNote`). A value that cannot be read on a
day that is kept (``abc`` as an answer) is a `BadValueIssue` naming that day, so validation
masks it (the day's other values stay) instead of counting a dropped row.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from veloready_pipeline.sources.base import ParseIssue, SourceResult
from veloready_pipeline.sources.common import (
    BadValueIssue,
    CsvTable,
    MissingTokenTally,
    ResolvedIssue,
    finish_frame,
    is_missing,
    join_notes,
    missing_sensor_notes,
    parse_number,
    read_csv_table,
    with_athlete,
)

#: The participants' local zone (PMData was collected in Norway).
PMDATA_TIMEZONE = "Europe/Oslo"

#: TSS per arbitrary unit of session load (RPE x minutes). One hour at session-RPE 8
#: ("very hard", about what a full hour at threshold feels like) is 480 AU and, by
#: Coggan's definition of an hour at FTP, 100 TSS. Linear, so CTL/ATL scale with load.
TSS_PER_SRPE_AU = 100.0 / (60.0 * 8.0)

#: Consecutive readiness answers of exactly 0 from which they count as unanswered.
READINESS_ZERO_RUN = 5

#: Wellness answers on PMSys's 1-5 scale (5 best) that map to canonical 0-100 columns.
FIVE_POINT: tuple[str, ...] = ("fatigue", "mood", "soreness", "stress")
#: Numeric wellness columns checked for the all-zero "empty form" pattern.
WELLNESS_NUMBERS: tuple[str, ...] = (
    "fatigue", "mood", "readiness", "sleep_duration_h", "sleep_quality", "soreness", "stress",
)
#: PMData column -> the canonical column it is read into (missing-value tokens in these
#: columns are counted per participant and column).
READ_INTO: dict[str, str] = {
    "readiness": "recovery_score", "sleep_duration_h": "sleep_hours",
    **{col: col for col in FIVE_POINT}, "overall_score": "sleep_score",
    "resting_heart_rate": "resting_hr", "perceived_exertion": "session_load",
    "duration_min": "session_load",
}
SEVERITY_RANK: dict[str, int] = {"minor": 1, "major": 2}

#: Days a reported body part stays "known": naming it again within them is not a new injury.
INJURY_RECURRENCE_DAYS = 14


def five_point_to_score(answer: float) -> float:
    """PMSys 1 (worst) .. 5 (best) -> canonical 0-100 with high = good."""
    return (answer - 1.0) / 4.0 * 100.0


def is_participant_folder(path: Path) -> bool:
    """True when ``path`` looks like one PMData participant (``pmsys``/``fitbit`` inside)."""
    return (path / "pmsys" / "wellness.csv").is_file() or (
        (path / "pmsys").is_dir() and (path / "fitbit").is_dir()
    )


def find_participants(root: Path) -> list[Path]:
    """Participant folders under a PMData root (or the root itself if it is one)."""
    if is_participant_folder(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and is_participant_folder(p))


def utc_stamp(raw: str | None) -> pd.Timestamp:
    """A PMSys/Fitbit timestamp as an aware UTC instant (naive text is UTC per the README).

    Raises:
        ValueError: if the text is not a timestamp.
    """
    if raw is None or is_missing(raw):
        raise ValueError("timestamp is empty")
    try:
        ts = pd.Timestamp(str(raw).strip())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{raw!r} is not a timestamp") from exc
    if ts is pd.NaT:
        raise ValueError(f"{raw!r} is not a timestamp")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def local_day(raw: str | None, tz: str) -> pd.Timestamp:
    """The local calendar day (naive midnight) of a PMSys/Fitbit timestamp.

    Raises:
        ValueError: if the text is not a timestamp.
    """
    return utc_stamp(raw).tz_convert(tz).tz_localize(None).normalize()


def _day_of(stamp: pd.Timestamp, tz: str) -> pd.Timestamp:
    return stamp.tz_convert(tz).tz_localize(None).normalize()


def _open_table(p: Participant, path: Path, required: tuple[str, ...]) -> CsvTable | None:
    """Read one participant CSV; a file without its required columns is one error."""
    table = read_csv_table(path)
    p.issues.extend(with_athlete(table.issues, p.athlete))
    absent = [c for c in required if c not in table.header]
    if absent:
        p.issue(path, 1, absent[0], f"header lacks column(s) {', '.join(absent)} "
                f"(has: {', '.join(table.header)}); file not used")
        return None
    return table


@dataclass
class Participant:
    """Everything read for one participant, per local day."""

    athlete: str
    days: dict[pd.Timestamp, dict[str, float]] = field(default_factory=dict)
    issues: list[ParseIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    session_count: int = 0
    tokens: MissingTokenTally = field(default_factory=MissingTokenTally)

    def count_tokens(self, file: Path, values: dict[str, str]) -> None:
        """Count the missing-value tokens among the read columns of one row."""
        for col, canon in READ_INTO.items():
            if col in values:
                self.tokens.seen(self.athlete, str(file), col, values[col], into=canon)

    def put(self, day: pd.Timestamp, column: str, value: float) -> None:
        self.days.setdefault(day, {})[column] = value

    def issue(self, file: Path, line: int | None, column: str | None, message: str) -> None:
        """An error: a value or row that could not be read."""
        self.issues.append(ParseIssue(self.athlete, str(file), line, column, message))

    def bad_value(self, day: pd.Timestamp, file: Path, line: int | None, column: str,
                  message: str) -> None:
        """An error for one value left empty on ``day`` (the day's row is kept)."""
        self.issues.append(BadValueIssue(self.athlete, str(file), line, column, message,
                                         day=f"{day:%Y-%m-%d}"))

    def warn(self, file: Path, line: int | None, column: str | None, message: str) -> None:
        """A warning: something this source settled itself (superseded, empty, a nap)."""
        self.issues.append(ResolvedIssue(self.athlete, str(file), line, column, message))


class PMDataSource:
    """The PMData folder layout (mapping in the module docstring).

    Args:
        path: the dataset folder (``pXX`` inside) or one participant's folder.
        timezone: the participants' zone for turning UTC timestamps into days.
    """

    name = "pmdata"

    def __init__(self, path: str | Path, timezone: str = PMDATA_TIMEZONE) -> None:
        self.path = Path(path)
        self.timezone = timezone

    def participants(self) -> list[Path]:
        """Participant folders this source reads."""
        if not self.path.exists():
            raise FileNotFoundError(f"pmdata: {self.path} does not exist")
        found = find_participants(self.path)
        if not found:
            raise FileNotFoundError(
                f"pmdata: no participant folders (pXX/pmsys/wellness.csv) under {self.path}"
            )
        return found

    def load(self) -> SourceResult:
        records: list[dict[str, object]] = []
        issues: list[ParseIssue] = []
        remarks: dict[str, list[str]] = {}
        for folder in self.participants():
            p = read_participant(folder, self.timezone)
            issues.extend(p.issues)
            remarks[p.athlete] = p.notes
            for day, values in sorted(p.days.items()):
                records.append({"athlete_id": p.athlete, "date": day, **values})
        if not records:
            raise ValueError(f"pmdata: no usable rows under {self.path}")
        frame = finish_frame(records)
        notes = missing_sensor_notes(frame)
        for athlete in remarks:
            notes.setdefault(athlete, [])
            if athlete not in set(frame["athlete_id"]):
                notes[athlete].append("no usable rows")
            notes[athlete] = [
                "no HRV (PMData has none)" if n == "no HRV" else n for n in notes[athlete]
            ]
        return SourceResult(frame=frame, issues=issues, notes=join_notes(notes, remarks))


def read_participant(folder: Path, tz: str = PMDATA_TIMEZONE) -> Participant:
    """Read one participant's files into per-day canonical values."""
    p = Participant(athlete=folder.name)
    _read_wellness(p, folder / "pmsys" / "wellness.csv", tz)
    sleep_rhr = _read_sleep_scores(p, folder / "fitbit" / "sleep_score.csv", tz)
    _read_resting_hr(p, folder / "fitbit" / "resting_heart_rate.json", sleep_rhr)
    load = _read_sessions(p, folder / "pmsys" / "srpe.csv", tz)
    events = _read_injuries(p, folder / "pmsys" / "injury.csv", tz)
    for day in load or {}:
        p.days.setdefault(day, {})
    for day in events or {}:
        p.days.setdefault(day, {})
    # Zero-fill only once every day is known: a rest day or an injury-free day is a
    # fact only for someone who logs sessions / files injury reports at all.
    for day, values in p.days.items():
        if load is not None:
            values["session_load"] = load.get(day, 0.0)
            values["tss"] = values["session_load"] * TSS_PER_SRPE_AU
        if events is not None:
            values["injury"] = events.get(day, 0.0)
    p.issues.extend(p.tokens.notes())
    if load is not None and p.days:
        sessions = p.session_count
        span = (max(p.days) - min(p.days)).days + 1
        note = (f"tss = session RPE x minutes x {TSS_PER_SRPE_AU:.3f} from {sessions} "
                "sessions; days without a session count as rest (0)")
        if sessions < span / 7:
            note += (f"; only {sessions} sessions in {span} days: training load is "
                     "probably under-reported")
        p.notes.append(note)
    return p


# --------------------------------------------------------------------------- wellness


_WellnessEntry = tuple[pd.Timestamp, pd.Timestamp, int, dict[str, float]]


def _read_wellness(p: Participant, path: Path, tz: str) -> None:
    if not path.is_file():
        p.notes.append("no pmsys/wellness.csv (no readiness, so no recovery target)")
        return
    table = _open_table(p, path, ("effective_time_frame", *WELLNESS_NUMBERS))
    if table is None:
        return
    entries: list[_WellnessEntry] = []
    for row in table.rows:
        try:
            stamp = utc_stamp(row.values.get("effective_time_frame"))
            day = _day_of(stamp, tz)
        except ValueError as exc:
            p.issue(path, row.line, "effective_time_frame", f"{exc}; row skipped")
            continue
        p.count_tokens(path, row.values)
        answers = _wellness_answers(p, path, row.line, day, row.values)
        if answers is None:
            continue
        _blank_out_of_range(p, path, row.line, day, answers)
        entries.append((stamp, day, row.line, answers))
    entries.sort(key=lambda e: e[0])
    _blank_readiness_zero_runs(p, path, entries)
    _put_latest_wellness(p, path, entries)


def _wellness_answers(p: Participant, path: Path, line: int, day: pd.Timestamp,
                      values: dict[str, str]) -> dict[str, float] | None:
    """The row's numeric answers (unreadable ones NaN); None for an empty submission."""
    answers: dict[str, float] = {}
    for col in WELLNESS_NUMBERS:
        raw = values.get(col)
        try:
            answers[col] = parse_number(raw)
        except ValueError:
            p.bad_value(day, path, line, col, f"value {raw!r} is not a number; left empty")
            answers[col] = math.nan
    if all(answers[c] == 0 for c in WELLNESS_NUMBERS):
        p.warn(path, line, None, "empty submission (every answer is 0); row skipped")
        return None
    return answers


def _blank_out_of_range(p: Participant, path: Path, line: int, day: pd.Timestamp,
                        answers: dict[str, float]) -> None:
    """Blank (NaN) the answers left unanswered (0) or outside their scale, each reported."""
    for col in FIVE_POINT:
        x = answers[col]
        if x == 0:  # PMSys writes 0 for a question left unanswered (see empty forms)
            p.warn(path, line, col, f"{col} 0 is outside the 1-5 scale: unanswered; "
                   "left empty")
            answers[col] = math.nan
        elif not math.isnan(x) and not 1 <= x <= 5:
            p.bad_value(day, path, line, col,
                        f"{col} {x:g} is outside the 1-5 scale; left empty")
            answers[col] = math.nan
    r = answers["readiness"]
    if not math.isnan(r) and not 0 <= r <= 10:
        p.bad_value(day, path, line, "readiness",
                    f"readiness {r:g} is outside the 0-10 scale; left empty")
        answers["readiness"] = math.nan
    h = answers["sleep_duration_h"]
    if h == 0:
        p.warn(path, line, "sleep_duration_h", "sleep_duration_h 0: unanswered; "
               "left empty")
        answers["sleep_duration_h"] = math.nan
    elif not math.isnan(h) and not 0 < h <= 24:
        p.bad_value(day, path, line, "sleep_duration_h",
                    f"sleep_duration_h {h:g} is not a sleep duration (0-24 h); left empty")
        answers["sleep_duration_h"] = math.nan


def _put_latest_wellness(p: Participant, path: Path, entries: list[_WellnessEntry]) -> None:
    """Each day's latest report (entries are in time order) into the participant's days."""
    kept: dict[pd.Timestamp, tuple[int, dict[str, float]]] = {}
    superseded = 0
    for _, day, line, answers in entries:  # in time order: the latest report wins
        if day in kept:
            p.warn(path, kept[day][0], None,
                   f"another wellness report for {day.date()} follows at line {line}; "
                   "this one is superseded")
            superseded += 1
        kept[day] = (line, answers)
    if superseded:
        p.notes.append(f"{superseded} wellness report(s) superseded by a later report of the "
                       "same day (by report time, each listed as a warning)")
    for day, (_, a) in kept.items():
        values = {
            "recovery_score": a["readiness"] * 10.0,
            "sleep_hours": a["sleep_duration_h"],
            **{col: five_point_to_score(a[col]) for col in FIVE_POINT},
        }
        for col, value in values.items():
            if not math.isnan(value):
                p.put(day, col, value)
            else:
                p.days.setdefault(day, {})


def _blank_readiness_zero_runs(
    p: Participant, path: Path, entries: list[_WellnessEntry],
) -> None:
    """Blank runs of >= READINESS_ZERO_RUN consecutive readiness answers of 0."""
    run: list[int] = []
    for i in [*range(len(entries)), None]:
        if i is not None and entries[i][3]["readiness"] == 0:
            run.append(i)
            continue
        if len(run) >= READINESS_ZERO_RUN:
            first, last = entries[run[0]][2], entries[run[-1]][2]
            p.warn(path, first, "readiness",
                   f"readiness is 0 on {len(run)} consecutive reports (lines {first}-{last}): "
                    "a slider left at its default, not an answer; left empty")
            p.notes.append(f"{len(run)} readiness answers of 0 in a row treated as unanswered")
            for j in run:
                entries[j][3]["readiness"] = math.nan
        run = []


# --------------------------------------------------------------------------- fitbit


def _read_sleep_scores(p: Participant, path: Path, tz: str) -> dict[pd.Timestamp, float]:
    """Sleep score per day into ``p``; returns the sleep logs' resting HR per day."""
    rhr: dict[pd.Timestamp, float] = {}
    if not path.is_file():
        p.notes.append("no fitbit/sleep_score.csv")
        return rhr
    table = _open_table(p, path, ("timestamp", "overall_score"))
    if table is None:
        return rhr
    best: dict[pd.Timestamp, tuple[float, int, float, float]] = {}
    for row in table.rows:
        try:
            day = local_day(row.values.get("timestamp"), tz)
        except ValueError as exc:
            p.issue(path, row.line, "timestamp", f"{exc}; row skipped")
            continue
        p.count_tokens(path, row.values)
        nums: dict[str, float] = {}
        for col in ("overall_score", "duration_score", "resting_heart_rate"):
            raw = row.values.get(col)
            try:
                nums[col] = parse_number(raw)
            except ValueError:
                p.bad_value(day, path, row.line, col,
                            f"value {raw!r} is not a number; left empty")
                nums[col] = math.nan
        score = nums["overall_score"]
        if score == 0:
            p.warn(path, row.line, "overall_score", "overall_score 0: no score; left empty")
            score = math.nan
        elif not math.isnan(score) and not 0 < score <= 100:
            p.bad_value(day, path, row.line, "overall_score",
                        f"overall_score {score:g} is outside 1-100; left empty")
            score = math.nan
        hr = nums["resting_heart_rate"]
        hr = math.nan if hr == 0 else hr
        weight = nums["duration_score"] if not math.isnan(nums["duration_score"]) else -1.0
        if day in best:
            other = best[day]
            keep_new = weight >= other[0]
            loser_line = other[1] if keep_new else row.line
            winner_line = row.line if keep_new else other[1]
            p.warn(path, loser_line, "overall_score",
                   f"a second sleep log on {day.date()} (line {winner_line}) has the longer "
                    "sleep; this one (a nap or split sleep) is not used")
            if not keep_new:
                continue
        best[day] = (weight, row.line, score, hr)
    for day, (_, _, score, hr) in best.items():
        if not math.isnan(score):
            p.put(day, "sleep_score", score)
        if not math.isnan(hr):
            rhr[day] = hr
    return rhr


def _read_resting_hr(p: Participant, path: Path, sleep_rhr: dict[pd.Timestamp, float]) -> None:
    """Daily resting HR from the Fitbit JSON, falling back to the sleep logs' value."""
    daily: dict[pd.Timestamp, float] = {}
    zeros = 0
    if path.is_file():
        try:
            entries = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None)
            p.issue(path, line, None, f"not valid JSON ({exc}); file not used")
            entries = []
        if not isinstance(entries, list):
            p.issue(path, 1, None, "expected a JSON list of daily readings; file not used")
            entries = []
        for index, entry in enumerate(entries):
            try:
                day = pd.Timestamp(str(entry["dateTime"])[:10])
                value = parse_number(entry["value"]["value"])
                if day is pd.NaT:
                    raise ValueError("dateTime is empty")
            except (KeyError, TypeError, ValueError) as exc:
                p.issue(path, None, None,
                        f"entry #{index} is not a daily reading ({exc!r}); skipped")
                continue
            if value == 0 or math.isnan(value):
                zeros += 1
                continue
            if day in daily:
                p.warn(path, None, None, f"entry #{index} repeats {day.date()}; later one used")
            daily[day] = value
    else:
        p.notes.append("no fitbit/resting_heart_rate.json")
    fallback = {d: v for d, v in sleep_rhr.items() if d not in daily}
    for day, value in {**daily, **fallback}.items():
        p.put(day, "resting_hr", value)
    parts = [f"resting HR: {len(daily)} days from the Fitbit daily file"]
    if fallback:
        parts.append(f"{len(fallback)} from sleep logs")
    if zeros:
        parts.append(f"{zeros} readings of 0 treated as missing")
    p.notes.append(", ".join(parts))


# --------------------------------------------------------------------------- pmsys


def _read_sessions(p: Participant, path: Path, tz: str) -> dict[pd.Timestamp, float] | None:
    """Session load per local day (None when the participant logged no usable session)."""
    if not path.is_file():
        p.notes.append("no pmsys/srpe.csv (no training load)")
        return None
    table = _open_table(p, path, ("end_date_time", "perceived_exertion", "duration_min"))
    if table is None:
        return None
    load: dict[pd.Timestamp, float] = {}
    for row in table.rows:
        v = row.values
        p.count_tokens(path, v)
        try:
            rpe = parse_number(v.get("perceived_exertion"))
            minutes = parse_number(v.get("duration_min"))
        except ValueError as exc:
            p.issue(path, row.line, None, f"session RPE/duration is not a number ({exc}); "
                    "session not counted")
            continue
        if math.isnan(rpe) and math.isnan(minutes):
            p.warn(path, row.line, "perceived_exertion",
                   "empty session entry (no RPE, no duration); not counted")
            continue
        if math.isnan(rpe) or math.isnan(minutes):
            missing = "perceived_exertion" if math.isnan(rpe) else "duration_min"
            p.issue(path, row.line, missing, f"session without {missing}; not counted")
            continue
        if not 0 <= rpe <= 10 or not 0 < minutes <= 24 * 60:
            p.issue(path, row.line, None,
                    f"session RPE {rpe:g} / {minutes:g} min is outside 0-10 / 1-1440; "
                    "not counted")
            continue
        try:
            end = utc_stamp(v.get("end_date_time"))
        except ValueError as exc:
            p.issue(path, row.line, "end_date_time", f"{exc}; session not counted")
            continue
        day = _day_of(end - pd.Timedelta(minutes=minutes), tz)
        load[day] = load.get(day, 0.0) + rpe * minutes
        p.session_count += 1
    if not p.session_count:
        p.notes.append("no usable sessions in pmsys/srpe.csv (no training load)")
        return None
    return load


def _parse_injuries(text: str) -> dict[str, str]:
    value = ast.literal_eval(text.strip() or "{}")
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("not a dict of body part -> severity")
    return {k.strip(): v.strip().lower() for k, v in value.items()}


def _read_injuries(p: Participant, path: Path, tz: str) -> dict[pd.Timestamp, float] | None:
    """Injury flag per report day: 1 on event days (None without usable reports)."""
    if not path.is_file():
        p.notes.append("no pmsys/injury.csv: injury unknown")
        return None
    table = _open_table(p, path, ("effective_time_frame", "injuries"))
    if table is None:
        p.notes.append("injury.csv unreadable: injury unknown")
        return None
    reports: list[tuple[pd.Timestamp, pd.Timestamp, int, dict[str, str]]] = []
    for row in table.rows:
        try:
            stamp = utc_stamp(row.values.get("effective_time_frame"))
            day = _day_of(stamp, tz)
        except ValueError as exc:
            p.issue(path, row.line, "effective_time_frame", f"{exc}; report skipped")
            continue
        raw = row.values.get("injuries", "")
        try:
            parts = _parse_injuries(raw)
        except (ValueError, SyntaxError) as exc:
            p.issue(path, row.line, "injuries",
                    f"injuries {raw!r} cannot be read ({exc}); report skipped")
            continue
        reports.append((stamp, day, row.line, parts))
    if not reports:
        p.notes.append("no usable injury reports: injury unknown")
        return None
    reports.sort(key=lambda r: r[0])
    events = _injury_event_days(r[1:] for r in reports)
    p.notes.append(f"{len(events)} injury event day(s) from {len(reports)} injury reports")
    return {r[1]: (1.0 if r[1] in events else 0.0) for r in reports}


def _injury_event_days(
    reports: Iterable[tuple[pd.Timestamp, int, dict[str, str]]],
) -> set[pd.Timestamp]:
    """Days of reports naming a body part new within `INJURY_RECURRENCE_DAYS`, or worse.

    A part counts as new when no report in the preceding window named it, and as an
    escalation when its severity is higher than anywhere in that window. The window
    keeps a knee that is reported on and off (daily reporters skip it some days) one
    injury instead of a dozen.
    """
    history: list[tuple[pd.Timestamp, dict[str, str]]] = []
    events: set[pd.Timestamp] = set()
    window = pd.Timedelta(days=INJURY_RECURRENCE_DAYS)
    for day, _, parts in reports:
        recent = [p for d, p in history if day - d <= window]
        for part, severity in parts.items():
            ranks = [SEVERITY_RANK.get(p[part], 1) for p in recent if part in p]
            if not ranks or SEVERITY_RANK.get(severity, 1) > max(ranks):
                events.add(day)
        history.append((day, parts))
    return events
