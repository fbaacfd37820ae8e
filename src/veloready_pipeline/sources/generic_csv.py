"""Any daily CSV export, described by a YAML mapping file.

Apps export daily data in their own columns, units, date formats and time zones. A
mapping file says how to read one such export into the canonical table
(`veloready_pipeline.schema`), so a new export needs a YAML file, not code.

Mapping format (every key is checked; a wrong key or value fails with the key's name)::

    # Which files. Relative to the mapping file. The source path (``--data``) wins
    # when given: a file, a folder (then the *file name part* of this pattern, or
    # ``*.csv``, is used inside it) or a glob.
    files: "exports/*_daily.csv"
    encoding: utf-8        # optional; default detects UTF-8 (BOM or not), UTF-16, cp1252
    delimiter: ";"         # optional; default sniffs , ; or tab from the header line

    # Who: exactly one of column / constant / from_filename.
    athlete:
      column: rider_id                 # one file for all athletes
      # constant: "rider-7"            # one file, one athlete
      # from_filename: "^(?P<athlete>[^_]+)_daily$"   # regex on the file stem, or
      # from_filename: true                           # the whole file stem

    # When: the column, its format and time zones. The canonical `date` is the
    # athlete's *local calendar day*.
    date:
      column: timestamp
      format: "%d/%m/%Y %H:%M"   # optional strptime format; default ISO 8601
      dayfirst: false            # only without `format`: 01/02 means 1 February
      timezone: Europe/Oslo      # the athlete's zone: zoned timestamps are converted to it
      source_timezone: UTC       # zone of *naive* timestamps (default: already local)

    # What: canonical column -> how to compute it. A bare string is just a column.
    fields:
      hrv_ms: rmssd
      resting_hr: {column: rhr}
      sleep_hours: {column: sleep_seconds, convert: seconds_to_hours}
      recovery_score: {column: readiness, scale: [0, 10]}   # linear [a, b] -> [0, 100]
      soreness: {column: soreness, scale: [5, 1]}           # a > b flips: 5 -> 0, 1 -> 100
      tss: {column: work_kj, convert: kj_to_tss, ftp_column: ftp, ftp_w: 250}
      alcohol: {column: drank, values: {"yes": 1, "no": 0}}
      injury: {column: injury_level, convert: nonzero_to_flag}
      planned_tss: {column: plan, multiply: 1.0, offset: 0.0}
      # A load that is not TSS goes to load_au with the range of its own scale (a
      # value outside it is reported and left empty); the load features use it when
      # the athlete has no tss, with rest days relative to the athlete's own load.
      load_au: {column: "Day Strain", range: [0, 21]}

    # Several rows on one local day (two cycles ending the same morning, one row per
    # workout, a re-synced record). Resolved by *time*, never by file order (Whoop
    # exports are newest-first, most others oldest-first):
    same_day:
      keep: latest       # latest (default): the row with the latest time wins;
                         # earliest: the earliest wins; combine: all rows are merged
                         # per field (`aggregate:` sum for tss/planned_tss/session_load/
                         # load_au, max for flags and power, mean otherwise; first/last
                         # in time order)
      by: "Cycle start time"   # optional: the column whose timestamp orders the rows
                               # of one day (default: the date column's own time);
                               # parsed with the date section's zones
      format: "%Y-%m-%d %H:%M:%S"   # optional strptime format of `by`
    # `same_day: combine` is short for `same_day: {keep: combine}`;
    # `combine_same_day: true` (older files) means the same.

Per field, in this order: ``values`` (text -> number), parse the number (a decimal
comma is accepted), ``range`` (the source scale's ends: a number outside is reported
and left empty), ``convert``, ``scale``, ``multiply``, ``offset``. Conversions:

- ``seconds_to_hours``, ``minutes_to_hours``: durations to hours.
- ``duration_to_hours``: text durations ``7:30``, ``7:30:00``, ``7h30m``, ``7h 30min``.
- ``fraction_to_percent``: 0-1 to 0-100.
- ``kj_to_tss``: mechanical work to TSS, with the FTP from ``ftp_column`` (per row;
  ``ftp_w`` is the fallback for empty cells) or ``ftp_w``. ``TSS = 100 * hours * IF^2`` and
  ``kJ = P * hours * 3.6`` give ``TSS = kJ * IF * 100 / (3.6 * FTP)``. The intensity
  factor of each ride is unknown from kJ alone, so a typical ``intensity_factor``
  (default 0.75, an endurance ride) is assumed, so this is an *estimate* (a ride at
  IF 0.6 or 0.9 is off by 20 %). For FTP 200-300 W it comes to roughly kJ / 10 to
  kJ / 14; kJ is not "TSS-ish" by itself. Use ``multiply`` for a factor of your own.
- ``nonzero_to_flag``: any non-zero number -> 1, zero -> 0 (injury, alcohol).

Values are never clipped: out-of-range results go to validation, which names them.
Rows this source cannot use (unparseable date, no athlete) are reported with file and
line and left out; a value that is not a number is reported and left empty. Those are
errors (`ParseIssue`). Problems the source settles itself are warnings
(`ResolvedIssue`): a row superseded by another of the same day (``same_day``), a row
whose date cell is empty (an unfinished record such as Whoop's open cycle without a
wake time: it belongs to no day yet), a file without a mapped column (that field is
empty for the file, like a missing sensor). Per athlete, the notes count the
superseded rows and say which rule kept which row, and flag a 0-100 field whose values
all lie within 0-10 (probably a 0-10 score mapped without ``scale: [0, 10]``).

Rows within a day are ordered by their time (``same_day.by``, else the date column);
rows whose time cannot be read sort before any timed row, and rows with equal times
keep file order (the later line counts as later), which the message then says.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from veloready_pipeline.schema import COLUMNS_BY_NAME
from veloready_pipeline.sources.base import ParseIssue, SourceResult
from veloready_pipeline.sources.common import (
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

Convert = Literal[
    "seconds_to_hours",
    "minutes_to_hours",
    "duration_to_hours",
    "fraction_to_percent",
    "kj_to_tss",
    "nonzero_to_flag",
]
Aggregate = Literal["mean", "sum", "max", "min", "first", "last"]

#: Canonical fields a mapping may fill (identity and date have their own sections).
MAPPABLE_FIELDS: tuple[str, ...] = tuple(
    name for name in COLUMNS_BY_NAME if name not in ("athlete_id", "date")
)
TEXT_FIELDS: frozenset[str] = frozenset(
    name for name, col in COLUMNS_BY_NAME.items() if col.dtype == "string"
) - {"athlete_id"}
_SUM_FIELDS = frozenset({"tss", "planned_tss", "session_load", "time_available_min",
                         "load_au"})
_MAX_FIELDS = frozenset({"injury", "alcohol", "illness_confidence", "ftp_test_w", "eftp_w"})

_DURATION = re.compile(
    r"^\s*(?:(?P<h>\d+(?:[.,]\d+)?)\s*h(?:ours?|rs?)?)?\s*"
    r"(?:(?P<m>\d+(?:[.,]\d+)?)\s*m(?:in(?:utes?)?)?)?\s*"
    r"(?:(?P<s>\d+(?:[.,]\d+)?)\s*s(?:ec(?:onds?)?)?)?\s*$",
    re.IGNORECASE,
)


class AthleteSpec(BaseModel):
    """Where the athlete id comes from: a column, a constant or the file name."""

    model_config = ConfigDict(extra="forbid")

    column: str | None = None
    constant: str | None = None
    from_filename: bool | str | None = Field(
        default=None, description="true: the file stem; a regex: its 'athlete' group or group 1"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> AthleteSpec:
        given = [
            k for k in ("column", "constant", "from_filename")
            if getattr(self, k) not in (None, False)
        ]
        if len(given) != 1:
            raise ValueError(
                "athlete: give exactly one of column, constant, from_filename "
                f"(got {', '.join(given) or 'none'})"
            )
        if isinstance(self.from_filename, str):
            try:
                re.compile(self.from_filename)
            except re.error as exc:
                raise ValueError(f"athlete.from_filename is not a valid regex: {exc}") from exc
        return self


class DateSpec(BaseModel):
    """The date column, its format and the time zones that make it a local day."""

    model_config = ConfigDict(extra="forbid")

    column: str
    format: str | None = None
    dayfirst: bool = False
    timezone: str | None = None
    source_timezone: str | None = None

    @field_validator("timezone", "source_timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                pd.Timestamp("2020-01-01").tz_localize(value)
            except Exception as exc:  # pytz/zoneinfo raise different types
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _source_needs_target(self) -> DateSpec:
        if self.source_timezone and not self.timezone:
            raise ValueError("date.source_timezone needs date.timezone (the athlete's zone)")
        return self


class FieldSpec(BaseModel):
    """How one canonical column is computed from one source column."""

    model_config = ConfigDict(extra="forbid")

    column: str
    values: dict[str, float] | None = None
    convert: Convert | None = None
    scale: tuple[float, float] | None = None
    multiply: float = 1.0
    offset: float = 0.0
    ftp_w: float | None = Field(default=None, gt=0, le=1000)
    ftp_column: str | None = None
    intensity_factor: float = Field(default=0.75, gt=0, le=1.5)
    aggregate: Aggregate | None = None
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)} must be [low, high] with low < high")
        if self.convert == "kj_to_tss" and self.ftp_w is None and self.ftp_column is None:
            raise ValueError("convert kj_to_tss needs ftp_w (the FTP in W) or ftp_column "
                             "(a column holding each row's FTP)")
        if self.scale is not None and self.scale[0] == self.scale[1]:
            raise ValueError(f"scale {list(self.scale)} has equal ends")
        return self


SameDayKeep = Literal["latest", "earliest", "combine"]


class SameDaySpec(BaseModel):
    """How several rows of one athlete and local day become one (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    keep: SameDayKeep = "latest"
    by: str | None = None
    format: str | None = None


class GenericMapping(BaseModel):
    """A whole mapping file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    files: str | None = None
    encoding: str | None = None
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    athlete: AthleteSpec
    date: DateSpec
    fields: dict[str, FieldSpec]
    same_day: SameDaySpec = Field(default_factory=SameDaySpec)
    combine_same_day: bool = False

    @field_validator("same_day", mode="before")
    @classmethod
    def _same_day_short_form(cls, value: Any) -> Any:
        return {"keep": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _same_day_consistent(self) -> GenericMapping:
        if self.combine_same_day:
            if "same_day" in self.model_fields_set and self.same_day.keep != "combine":
                raise ValueError(
                    f"combine_same_day: true contradicts same_day.keep: {self.same_day.keep}; "
                    "give only same_day"
                )
            self.same_day = self.same_day.model_copy(update={"keep": "combine"})
        return self

    @property
    def time_column(self) -> str:
        """The column whose timestamp orders the rows of one day."""
        return self.same_day.by or self.date.column

    @field_validator("fields", mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ({"column": v} if isinstance(v, str) else v) for k, v in value.items()}
        return value

    @field_validator("fields")
    @classmethod
    def _canonical_names(cls, value: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        unknown = sorted(set(value) - set(MAPPABLE_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown canonical field(s) {', '.join(unknown)}; "
                f"known: {', '.join(MAPPABLE_FIELDS)}"
            )
        if not value:
            raise ValueError("fields: map at least one canonical field")
        return value


def load_mapping(source: str | Path | dict[str, Any] | GenericMapping) -> GenericMapping:
    """Read and validate a mapping (YAML path, dict or model).

    Raises:
        ValueError: naming the mapping file and the offending key.
        FileNotFoundError: when the mapping file does not exist.
    """
    if isinstance(source, GenericMapping):
        return source
    where = "mapping"
    if isinstance(source, (str, Path)):
        where = str(source)
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8-sig"))
    else:
        data = source
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a mapping file must hold a YAML mapping at the top level")
    try:
        return GenericMapping.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(f"{where}: invalid mapping: {problems}") from exc


# --------------------------------------------------------------------------- values


def parse_duration_hours(value: str) -> float:
    """Hours from ``7:30``, ``7:30:15``, ``7h30m``, ``450 min`` or a plain number of hours."""
    text = value.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{value!r} is not a duration like 7:30 or 7:30:00")
        nums = [int(p) for p in parts] + [0]
        return nums[0] + nums[1] / 60 + nums[2] / 3600
    match = _DURATION.match(text)
    if match and any(match.group(g) for g in ("h", "m", "s")):
        h, m, s = (float((match.group(g) or "0").replace(",", ".")) for g in ("h", "m", "s"))
        return h + m / 60 + s / 3600
    return parse_number(text)


def apply_field(raw: object, spec: FieldSpec, row: dict[str, object] | None = None) -> float:
    """The canonical value of one cell; raises ValueError saying what is wrong.

    Missing cells give NaN. The steps run in the documented order. ``row`` supplies
    other cells of the same row (the FTP for ``kj_to_tss`` with ``ftp_column``).
    """
    if is_missing(raw):
        return math.nan
    if spec.values is not None:
        raw = _mapped_value(raw, spec.values)
    if spec.convert == "duration_to_hours" and isinstance(raw, str):
        x = parse_duration_hours(raw)
    else:
        x = parse_number(raw)
    if math.isnan(x):
        return x
    if spec.range is not None and not spec.range[0] <= x <= spec.range[1]:
        raise ValueError(f"{x:g} is outside the mapped range {spec.range[0]:g} to "
                         f"{spec.range[1]:g}")
    x = _convert(x, spec, row)
    if spec.scale is not None:
        a, b = spec.scale
        x = (x - a) / (b - a) * 100.0
    return x * spec.multiply + spec.offset


def _mapped_value(raw: object, values: dict[str, float]) -> object:
    """The ``values`` mapping of a cell (case-insensitive); a numeric cell passes through."""
    key = str(raw).strip()
    lookup = {str(k).strip().lower(): v for k, v in values.items()}
    if key.lower() in lookup:
        return lookup[key.lower()]
    if not _looks_numeric(key):
        raise ValueError(f"{raw!r} is not one of {sorted(values)}")
    return raw


def _convert(x: float, spec: FieldSpec, row: dict[str, object] | None) -> float:
    """The field's ``convert`` step."""
    if spec.convert == "seconds_to_hours":
        return x / 3600.0
    if spec.convert == "minutes_to_hours":
        return x / 60.0
    if spec.convert == "fraction_to_percent":
        return x * 100.0
    if spec.convert == "kj_to_tss":
        ftp = spec.ftp_w
        if spec.ftp_column is not None:
            cell = (row or {}).get(spec.ftp_column)
            row_ftp = math.nan if is_missing(cell) else parse_number(cell)
            if not math.isnan(row_ftp):
                ftp = row_ftp
        if ftp is None or not ftp > 0:
            raise ValueError(f"no FTP for kj_to_tss (column {spec.ftp_column!r} is empty "
                             "and no ftp_w fallback)")
        return x * spec.intensity_factor * 100.0 / (3.6 * ftp)
    if spec.convert == "nonzero_to_flag":
        return 0.0 if x == 0 else 1.0
    return x


def _looks_numeric(text: str) -> bool:
    try:
        parse_number(text)
    except ValueError:
        return False
    return True


def parse_local_date(raw: object, spec: DateSpec) -> pd.Timestamp:
    """The athlete's local calendar day (midnight, naive) of one date cell.

    The day of `parse_local_time`; raises as it does.
    """
    return parse_local_time(raw, spec).normalize()


def parse_local_time(raw: object, spec: DateSpec) -> pd.Timestamp:
    """The athlete's local wall-clock time (naive) of one date cell.

    Zoned timestamps are converted to ``spec.timezone`` (or, without one, kept at the
    wall-clock time they were written in); naive timestamps are taken as local unless
    ``spec.source_timezone`` says in which zone they were written.

    Raises:
        ValueError: if the cell is empty or not a date in the expected format.
    """
    if is_missing(raw):
        raise ValueError("date is empty")
    if isinstance(raw, datetime):
        ts = pd.Timestamp(raw)
    elif isinstance(raw, date):
        return pd.Timestamp(raw)
    else:
        text = str(raw).strip()
        if spec.format:
            try:
                ts = pd.Timestamp(datetime.strptime(text, spec.format))
            except ValueError as exc:
                raise ValueError(f"{text!r} does not match format {spec.format!r}") from exc
        else:
            try:
                ts = pd.to_datetime(text, dayfirst=spec.dayfirst)
            except (ValueError, OverflowError) as exc:
                raise ValueError(f"{text!r} is not a date") from exc
            if ts is pd.NaT:
                raise ValueError(f"{text!r} is not a date")
    if ts.tzinfo is None:
        if spec.source_timezone and spec.timezone:
            ts = ts.tz_localize(
                spec.source_timezone, ambiguous=True, nonexistent="shift_forward"
            ).tz_convert(spec.timezone)
    elif spec.timezone:
        ts = ts.tz_convert(spec.timezone)
    if ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    return ts


# --------------------------------------------------------------------------- rows


@dataclass
class RawRow:
    """One source row before mapping: where it came from and its cells."""

    file: str
    line: int | None
    values: dict[str, object]
    athlete_hint: str | None = None  # athlete id known from outside the row (file name)


@dataclass
class MappedRows:
    """Rows mapped to canonical records, plus what went wrong on the way."""

    records: list[dict[str, object]] = field(default_factory=list)
    issues: list[ParseIssue] = field(default_factory=list)


def athlete_from_filename(path: Path, spec: AthleteSpec) -> str | None:
    """The athlete id a file name gives (None when a regex does not match)."""
    stem = path.stem
    if spec.from_filename is True:
        return stem
    assert isinstance(spec.from_filename, str)
    match = re.search(spec.from_filename, stem)
    if not match:
        return None
    if "athlete" in match.groupdict():
        return match.group("athlete")
    return match.group(1) if match.groups() else match.group(0)


_EMPTY_DATE = ("date is empty (an unfinished record, e.g. an open cycle without a wake "
               "time: it belongs to no day yet); row skipped")


def map_rows(rows: Iterable[RawRow], mapping: GenericMapping) -> MappedRows:
    """Apply the athlete, date and field rules to raw rows.

    Rows without a usable athlete or date are reported and left out (there is no day
    to put them on); bad values are reported and left empty. An empty date cell is a
    warning (an unfinished record), an unreadable one an error. Cells of mapped columns
    spelled as a documented missing-value token (``n/a``, ``NaN``, ``#N/A``, ...) are read
    as missing and counted per athlete, file and column (`MissingTokenNote`); any other
    text in a numeric field is a bad value (an error naming line and column, the value
    left empty and masked by validation). Each record keeps its
    local time (``_time``, NaT when unknown) and its place in the input (``_order``) for
    `collapse_days`.
    """
    out = MappedRows()
    tokens = MissingTokenTally()
    date_cache: dict[object, pd.Timestamp | ValueError] = {}
    time_cache: dict[object, pd.Timestamp] = {}
    by = mapping.same_day.by
    by_spec = None
    if by is not None:
        by_spec = mapping.date.model_copy(update={"column": by,
                                                  "format": mapping.same_day.format})
    for order, row in enumerate(rows):
        athlete = _row_athlete(row, mapping.athlete)
        if not athlete:
            out.issues.append(ParseIssue(None, row.file, row.line, mapping.athlete.column,
                                         "no athlete id; row skipped"))
            continue
        raw_date = row.values.get(mapping.date.column)
        if is_missing(raw_date):
            out.issues.append(ResolvedIssue(athlete, row.file, row.line, mapping.date.column,
                                            _EMPTY_DATE))
            continue
        key = raw_date if isinstance(raw_date, (str, int, float)) else repr(raw_date)
        parsed = date_cache.get(key)
        if parsed is None:
            try:
                parsed = parse_local_time(raw_date, mapping.date)
            except ValueError as exc:
                parsed = exc
            date_cache[key] = parsed
        if isinstance(parsed, ValueError):
            out.issues.append(ParseIssue(athlete, row.file, row.line, mapping.date.column,
                                         f"{parsed}; row skipped"))
            continue
        when = parsed
        if by_spec is not None:
            raw_time = row.values.get(by_spec.column)
            tkey = raw_time if isinstance(raw_time, (str, int, float)) else repr(raw_time)
            if tkey not in time_cache:
                try:
                    time_cache[tkey] = parse_local_time(raw_time, by_spec)
                except ValueError:
                    time_cache[tkey] = pd.NaT
            when = time_cache[tkey]
        record: dict[str, object] = {"athlete_id": athlete, "date": parsed.normalize(),
                                     "_file": row.file, "_line": row.line,
                                     "_time": when, "_order": order}
        _map_fields(record, row, athlete, mapping, tokens, out.issues)
        out.records.append(record)
    out.issues.extend(tokens.notes())
    return out


def _row_athlete(row: RawRow, spec: AthleteSpec) -> str | None:
    """The row's athlete id: its column, else the constant, else the file's hint."""
    if spec.column is not None:
        athlete_raw = row.values.get(spec.column)
        return None if is_missing(athlete_raw) else str(athlete_raw).strip()
    if spec.constant is not None:
        return spec.constant
    return row.athlete_hint


def _map_fields(record: dict[str, object], row: RawRow, athlete: str,
                mapping: GenericMapping, tokens: MissingTokenTally,
                issues: list[ParseIssue]) -> None:
    """The mapped fields of one row into ``record``; unusable values NaN and reported."""
    for name, spec in mapping.fields.items():
        if spec.column not in row.values:
            continue
        raw = row.values[spec.column]
        tokens.seen(athlete, row.file, spec.column, raw, into=name)
        if name in TEXT_FIELDS:
            record[name] = None if is_missing(raw) else str(raw).strip()
            continue
        try:
            record[name] = apply_field(raw, spec, row.values)
        except (ValueError, TypeError) as exc:
            record[name] = math.nan
            issues.append(ParseIssue(
                athlete, row.file, row.line, spec.column,
                f"value {raw!r} for {name} is not usable: {exc}; left empty",
            ))


def _time_key(rec: dict[str, object]) -> tuple[int, pd.Timestamp, int]:
    """Sort key of a record within its day: unknown time first, then time, then order."""
    when = rec.get("_time")
    known = isinstance(when, pd.Timestamp) and when is not pd.NaT
    return (1 if known else 0, when if known else pd.Timestamp.min,  # type: ignore[return-value]
            int(rec.get("_order", 0)))  # type: ignore[call-overload]


def _where(rec: dict[str, object]) -> str:
    return f"{Path(str(rec['_file'])).name}:{rec['_line']}"


def _when_text(rec: dict[str, object]) -> str:
    when = rec.get("_time")
    if not isinstance(when, pd.Timestamp) or when is pd.NaT:
        return "no readable time"
    return str(when)


def collapse_days(
    records: list[dict[str, object]], mapping: GenericMapping,
    notes: dict[str, list[str]] | None = None,
) -> tuple[list[dict[str, object]], list[ParseIssue]]:
    """One record per athlete and local day, by ``mapping.same_day`` (module docstring).

    With ``keep: latest``/``earliest`` every other row of the day is reported as a
    superseded warning naming the row kept and both times. With ``keep: combine`` every
    row contributes through its field's aggregate. When ``notes`` is given, each
    athlete with same-day rows gets one line there: how many rows were superseded (or
    combined) and by which rule.
    """
    groups: dict[tuple[str, pd.Timestamp], list[dict[str, object]]] = {}
    for rec in records:
        groups.setdefault((str(rec["athlete_id"]), rec["date"]), []).append(rec)  # type: ignore[arg-type]
    out: list[dict[str, object]] = []
    issues: list[ParseIssue] = []
    keep = mapping.same_day.keep
    by = mapping.time_column
    counts: dict[str, list[int]] = {}  # athlete -> [days with several rows, extra rows]
    for (athlete, day), group in groups.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        tally = counts.setdefault(athlete, [0, 0])
        tally[0] += 1
        tally[1] += len(group) - 1
        ordered = sorted(group, key=_time_key)
        if keep != "combine":
            kept = ordered[-1] if keep == "latest" else ordered[0]
            for rec in group:
                if rec is kept:
                    continue
                tie = _time_key(rec)[:2] == _time_key(kept)[:2]
                why = (f"same time ({_when_text(rec)}); the "
                       f"{'later' if keep == 'latest' else 'earlier'} line in the input wins"
                       if tie else
                       f"{by} {_when_text(kept)} is {'later' if keep == 'latest' else 'earlier'}"
                       f" than this row's {_when_text(rec)}")
                issues.append(ResolvedIssue(
                    athlete, str(rec["_file"]), rec["_line"], by,  # type: ignore[arg-type]
                    f"superseded: {_where(kept)} is another row for {day.date()} and is kept "
                    f"(same_day keep: {keep}; {why})",
                ))
            out.append(kept)
            continue
        merged: dict[str, object] = {"athlete_id": athlete, "date": day,
                                     "_file": ordered[0]["_file"], "_line": ordered[0]["_line"]}
        for name, spec in mapping.fields.items():
            values = [r[name] for r in ordered if name in r and not is_missing(r[name])]
            merged[name] = _aggregate(name, spec, values)
        out.append(merged)
    if notes is not None:
        for athlete, (days, extra) in sorted(counts.items()):
            if keep == "combine":
                line = (f"{days} day(s) had several rows: {days + extra} rows combined into "
                        f"{days} (same_day keep: combine, sum for loads, max for flags and "
                        "power, mean otherwise)")
            else:
                line = (f"{extra} row(s) superseded on {days} day(s) with several rows "
                        f"(same_day keep: {keep} by {by}, each listed as a warning)")
            notes.setdefault(athlete, []).append(line)
    return out, issues


#: Canonical 0-100 score fields whose values are checked for a 0-10 scale.
SCORE_FIELDS: tuple[str, ...] = tuple(
    name for name, col in COLUMNS_BY_NAME.items() if col.unit == "0-100"
)


def ten_point_notes(records: list[dict[str, object]], mapping: GenericMapping,
                    min_values: int = 10) -> dict[str, list[str]]:
    """Per athlete: 0-100 score fields mapped as-is whose values all lie within 0-10.

    Such a field is almost surely a 0-10 score (a 70 % readiness is not written 7);
    the mapping decides (``scale: [0, 10]``), this only says so. ``min_values`` guards
    against a handful of genuinely low scores.
    """
    fields = [n for n in SCORE_FIELDS if n in mapping.fields
              and mapping.fields[n].scale is None and mapping.fields[n].convert is None
              and mapping.fields[n].multiply == 1.0]
    seen: dict[tuple[str, str], list[float]] = {}
    for rec in records:
        for name in fields:
            v = rec.get(name)
            if isinstance(v, float) and not math.isnan(v):
                seen.setdefault((str(rec["athlete_id"]), name), []).append(v)
    notes: dict[str, list[str]] = {}
    for (athlete, name), values in sorted(seen.items()):
        if len(values) >= min_values and max(values) <= 10.0:
            notes.setdefault(athlete, []).append(
                f"{name} values all lie within 0-10 ({len(values)} values, max "
                f"{max(values):g}) though the column is 0-100: a 0-10 score? map it with "
                f"scale: [0, 10] (column {mapping.fields[name].column!r})"
            )
    return notes


def _aggregate(name: str, spec: FieldSpec, values: list[object]) -> object:
    if not values:
        return None
    how = spec.aggregate or (
        "last" if name in TEXT_FIELDS
        else "sum" if name in _SUM_FIELDS
        else "max" if name in _MAX_FIELDS or name.startswith("best_power_")
        else "mean"
    )
    if how == "first":
        return values[0]
    if how == "last":
        return values[-1]
    nums = [float(v) for v in values]  # type: ignore[arg-type]
    if how == "sum":
        return sum(nums)
    if how == "max":
        return max(nums)
    if how == "min":
        return min(nums)
    return sum(nums) / len(nums)


# --------------------------------------------------------------------------- source


def resolve_files(path: str | Path | None, mapping: GenericMapping,
                  mapping_dir: Path | None) -> list[Path]:
    """The CSV files to read (see ``files`` in the module docstring)."""
    if path is not None:
        text = str(path)
        if any(ch in text for ch in "*?["):
            base = Path(text)
            anchor = Path(base.anchor) if base.is_absolute() else Path(".")
            rel = str(base.relative_to(anchor)) if base.is_absolute() else text
            found = sorted(p for p in anchor.glob(rel) if p.is_file())
            where = text
        elif Path(text).is_dir():
            pattern = Path(mapping.files).name if mapping.files else "*.csv"
            found = sorted(p for p in Path(text).glob(pattern) if p.is_file())
            where = f"{text}/{pattern}"
        else:
            if not Path(text).exists():
                raise FileNotFoundError(f"generic_csv: {text} does not exist")
            return [Path(text)]
    else:
        if not mapping.files:
            raise ValueError("generic_csv: no data path given and the mapping has no 'files'")
        base_dir = mapping_dir or Path(".")
        pattern = mapping.files
        if Path(pattern).is_absolute():
            anchor = Path(Path(pattern).anchor)
            found = sorted(p for p in anchor.glob(str(Path(pattern).relative_to(anchor)))
                           if p.is_file())
        else:
            found = sorted(p for p in base_dir.glob(pattern) if p.is_file())
        where = str(base_dir / pattern)
    if not found:
        raise FileNotFoundError(f"generic_csv: no files match {where}")
    return found


class GenericCsvSource:
    """Daily CSV exports read through a YAML mapping (format in the module docstring).

    Args:
        mapping: the mapping file (or an already parsed dict / `GenericMapping`).
        path: a CSV file, folder or glob; default the mapping's ``files``.
    """

    name = "generic_csv"

    def __init__(self, mapping: str | Path | dict[str, Any] | GenericMapping,
                 path: str | Path | None = None) -> None:
        self.mapping_path = Path(mapping) if isinstance(mapping, (str, Path)) else None
        self.mapping = load_mapping(mapping)
        self.path = path

    def files(self) -> list[Path]:
        """The files this source reads."""
        mapping_dir = self.mapping_path.parent if self.mapping_path else None
        return resolve_files(self.path, self.mapping, mapping_dir)

    def _rows(self, files: list[Path], issues: list[ParseIssue]) -> Iterator[RawRow]:
        m = self.mapping
        seen_columns: set[str] = set()
        needed = {m.date.column} | ({m.athlete.column} if m.athlete.column else set())
        for f in files:
            table = read_csv_table(f, encoding=m.encoding, delimiter=m.delimiter)
            header = set(table.header)
            seen_columns |= header
            hint = None
            if m.athlete.from_filename not in (None, False):
                hint = athlete_from_filename(f, m.athlete)
                if hint is None:
                    issues.append(ParseIssue(
                        None, str(f), None, None,
                        f"file name does not match athlete.from_filename "
                        f"{m.athlete.from_filename!r}; file skipped",
                    ))
                    continue
            issues.extend(with_athlete(table.issues, hint or m.athlete.constant))
            absent = sorted(needed - header)
            if absent:
                issues.append(ParseIssue(
                    hint, str(f), 1, absent[0],
                    f"header lacks column(s) {', '.join(absent)}; file skipped",
                ))
                continue
            for name, spec in m.fields.items():
                if spec.column not in header:
                    issues.append(ResolvedIssue(
                        hint, str(f), 1, spec.column,
                        f"header lacks column {spec.column!r} mapped to {name}; "
                        f"{name} is empty for this file",
                    ))
            for row in table.rows:
                yield RawRow(str(f), row.line, dict(row.values), hint)
        never = sorted({s.column for s in m.fields.values()} - seen_columns)
        if never and seen_columns:
            raise ValueError(
                f"generic_csv: mapped column(s) {', '.join(never)} appear in none of "
                f"{len(files)} file(s); check the mapping "
                f"({self.mapping_path or 'inline'}) against the export's header"
            )

    def load(self) -> SourceResult:
        files = self.files()
        issues: list[ParseIssue] = []
        mapped = map_rows(self._rows(files, issues), self.mapping)
        issues.extend(mapped.issues)
        if not mapped.records:
            raise ValueError(
                f"generic_csv: no usable rows in {len(files)} file(s) "
                f"({len(issues)} problem(s); first: "
                f"{issues[0].message if issues else 'files are empty'})"
            )
        same_day: dict[str, list[str]] = {}
        records, dup_issues = collapse_days(mapped.records, self.mapping, same_day)
        issues.extend(dup_issues)
        frame = finish_frame(records)
        return SourceResult(frame=frame, issues=issues,
                            notes=join_notes(missing_sensor_notes(frame), same_day,
                                             ten_point_notes(records, self.mapping)))
