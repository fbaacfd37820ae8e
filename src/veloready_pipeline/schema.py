"""The canonical daily table: one row per athlete per day.

Every source maps its rows onto these columns (units fixed here) before validation.
The Great Expectations suite, the features and the docs are all generated from
`CANONICAL_COLUMNS`, so this module is the single place the schema is written down.
Columns marked ``required`` must exist in every frame (they may still be null where
``nullable``); optional ones may be absent entirely (a source without power data has
no ``best_power_*`` columns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Column:
    """One canonical column and its rules."""

    name: str
    dtype: str  # "string", "date", "float", "int", "bool"
    unit: str
    description: str
    required: bool = False
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    max_missing_rate: float | None = None  # share of an athlete's rows allowed null


POWER_DURATIONS_S: tuple[int, ...] = (1, 5, 10, 30, 60, 300, 1200, 3600)
POWER_COLUMNS: tuple[str, ...] = tuple(f"best_power_{d}s" for d in POWER_DURATIONS_S)

CANONICAL_COLUMNS: tuple[Column, ...] = (
    Column("athlete_id", "string", "-", "stable athlete identifier", True, False),
    Column("date", "date", "day", "local calendar day of the row", True, False),
    Column("hrv_ms", "float", "ms", "morning HRV (rMSSD)", False, True, 5, 250, 0.5),
    Column("resting_hr", "float", "bpm", "morning resting heart rate", False, True, 25, 120, 0.5),
    Column("sleep_score", "float", "0-100", "sleep score", False, True, 0, 100, 0.5),
    Column("sleep_hours", "float", "h", "time asleep", False, True, 0, 16, 0.6),
    Column("tss", "float", "TSS", "training stress of the day (0 on rest days)", False, True, 0,
           800, 0.5),
    Column("planned_tss", "float", "TSS", "planned training stress", False, True, 0, 800),
    Column("load_au", "float", "AU", "the day's training load on a non-TSS scale (e.g. Whoop "
           "Day Strain 0-21, session RPE x min); used for the load features only when `tss` "
           "is empty, with rest days relative to the athlete's own load (see "
           "`features.rest_threshold`); map it with `range: [low, high]` to state its scale",
           False, True, 0, 10000),
    Column("recovery_score", "float", "0-100", "morning recovery/readiness score", True, True,
           0, 100, 0.5),
    Column("illness_confidence", "float", "0-1", "confidence the athlete is ill", False, True,
           0, 1),
    Column("alcohol", "float", "0/1", "alcohol the evening before", False, True, 0, 1),
    Column("fatigue", "float", "0-100", "self-reported fatigue (high = fresh)", False, True, 0,
           100),
    Column("soreness", "float", "0-100", "self-reported soreness (high = not sore)", False, True,
           0, 100),
    Column("stress", "float", "0-100", "self-reported stress (high = relaxed)", False, True, 0,
           100),
    Column("mood", "float", "0-100", "self-reported mood", False, True, 0, 100),
    Column("session_load", "float", "AU", "session RPE x minutes, summed over the day", False,
           True, 0, 10000),
    Column("time_available_min", "float", "min", "time the athlete has for training", False,
           True, 0, 1440),
    Column("planned_workout", "string", "-", "free text of the planned workout", False, True),
    *(
        Column(c, "float", "W", f"best mean power over {c[11:-1]} s on that day", False, True,
               0, 2500)
        for c in POWER_COLUMNS
    ),
    Column("ftp_test_w", "float", "W", "FTP measured by a test that day (label)", False, True,
           50, 600),
    Column("eftp_w", "float", "W", "estimated FTP that day from the platform's power model "
           "(intervals.icu `Ride_eftp`/`*_eftp`): an input, never a label", False, True, 50,
           600),
    Column("injury", "float", "0/1", "an injury/overtraining event starts that day", False, True,
           0, 1),
)

COLUMNS_BY_NAME: dict[str, Column] = {c.name: c for c in CANONICAL_COLUMNS}
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c.name for c in CANONICAL_COLUMNS if c.required)
# Columns every source emits (all-null where it has no such sensor), so downstream code
# can rely on them existing; only REQUIRED_COLUMNS must also carry values.
CORE_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, "resting_hr", "sleep_score", "tss")
FLOAT_COLUMNS: tuple[str, ...] = tuple(c.name for c in CANONICAL_COLUMNS if c.dtype == "float")


_UTC_OFFSET = re.compile(
    r"^(.*\d[T ]\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)\s*(?:Z|UTC|[+-]\d{2}(?::?\d{2})?)$",
    re.IGNORECASE,
)


def parse_days(values: pd.Series) -> pd.Series:
    """Local calendar days from dates or timestamps, one row at a time where needed.

    A timestamp with a UTC offset keeps the calendar day of its own wall-clock time
    (``2026-01-01T23:30-05:00`` is 1 January, where that athlete was), so rows written
    with different offsets (travel, daylight saving, two athletes' devices in one file)
    are each normalised on their own instead of failing the whole column. Rows whose
    format differs from the rest are parsed as ISO 8601 one by one; what still cannot be
    read is NaT (the caller reports it).
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values.dt.tz_localize(None) if values.dt.tz is not None else values
        return parsed.dt.normalize().astype("datetime64[ns]")
    try:
        parsed = pd.to_datetime(values, errors="coerce", utc=False)
        if parsed.dt.tz is not None:
            parsed = parsed.dt.tz_localize(None)
    except (ValueError, TypeError):  # offsets differ between rows
        parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    text = values.astype("string").str.strip()
    todo = parsed.isna() & text.fillna("").ne("")
    if todo.any():
        local = text[todo].str.replace(_UTC_OFFSET, r"\1", regex=True)
        parsed = parsed.astype("datetime64[ns]")
        parsed.loc[todo] = pd.to_datetime(local, errors="coerce", format="ISO8601")
    return parsed.dt.normalize().astype("datetime64[ns]")


def coerce_canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Give known columns their canonical dtypes without dropping anything.

    Values that cannot be converted are kept as NaN *and* recorded in the column
    ``_coerce_errors`` (semicolon-separated column names) so validation can report
    the exact row instead of the bad value silently disappearing.
    """
    out = df.copy()
    errors = pd.Series([""] * len(out), index=out.index, dtype="object")
    if "athlete_id" in out:
        out["athlete_id"] = out["athlete_id"].astype("string")
    if "date" in out:
        parsed = parse_days(out["date"])
        bad = parsed.isna() & out["date"].notna()
        errors[bad] += "date;"
        out["date"] = parsed
    for name in FLOAT_COLUMNS:
        if name in out:
            raw = out[name]
            if raw.dtype == bool:
                raw = raw.astype(float)
            num = pd.to_numeric(raw, errors="coerce")
            bad = num.isna() & raw.notna() & (raw.astype("string").str.strip() != "")
            errors[bad] += f"{name};"
            out[name] = num.astype("float64")
    if "planned_workout" in out:
        out["planned_workout"] = out["planned_workout"].astype("string")
    if errors.str.len().gt(0).any():
        out["_coerce_errors"] = errors
    return out


def schema_markdown() -> str:
    """The schema as a Markdown table (used by docs and `veloready schema`)."""
    lines = [
        "| column | type | unit | required | range | max missing | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in CANONICAL_COLUMNS:
        rng = "" if c.min is None else f"{c.min:g}–{c.max:g}"
        miss = "" if c.max_missing_rate is None else f"{c.max_missing_rate:.0%}"
        lines.append(
            f"| `{c.name}` | {c.dtype} | {c.unit} | {'yes' if c.required else 'no'} | {rng} "
            f"| {miss} | {c.description} |"
        )
    return "\n".join(lines)
