"""Brief inputs: what a coach needs to know about one athlete on one morning.

Every number the rules engine and the LLM see goes through `BriefInputs`, a frozen
pydantic model with physiological bounds, so a corrupt row becomes an error that names
the athlete and the field instead of a confident brief built on garbage. The values
are computed from the canonical daily table (`veloready_pipeline.schema`) *as of the
morning* of the brief date: training load uses only the days before it (today's ride
has not happened yet), morning values (recovery, HRV, resting HR, sleep) come from the
day's own row.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from veloready_pipeline.training_load import training_load

BASELINE_DAYS = 7  # rolling baseline window for the HRV / resting-HR deltas
MIN_BASELINE_VALUES = 3  # fewer prior readings than this: the delta is unknown, not 0
SLEEP_NEED_H = 8.0  # nightly sleep need behind the 7-night sleep debt
MAX_PLANNED_WORKOUT_CHARS = 300

Severity = Literal["none", "low", "moderate", "high"]
SEVERITY_ORDER: dict[str, int] = {"none": 0, "low": 1, "moderate": 2, "high": 3}

# Field of `BriefInputs` -> canonical column it is read from (for error messages).
FIELD_COLUMNS: dict[str, str] = {
    "recovery": "recovery_score",
    "sleep_score": "sleep_score",
    "sleep_hours": "sleep_hours",
    "hrv_ms": "hrv_ms",
    "hrv_delta_pct": "hrv_ms",
    "resting_hr": "resting_hr",
    "rhr_delta_pct": "resting_hr",
    "ctl": "tss",
    "atl": "tss",
    "tsb": "tss",
    "tss_7d": "tss",
    "planned_tss": "planned_tss",
    "target_tss_low": "planned_tss",
    "target_tss_high": "planned_tss",
    "planned_workout": "planned_workout",
    "time_available_min": "time_available_min",
    "sleep_debt_h": "sleep_hours",
    "body_stress": "illness_confidence",
}


class BodyStress(BaseModel):
    """The illness / body-stress indicator: how bad, how sure, and from what."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Severity = "none"
    confidence: float = Field(default=0.0, ge=0, le=1)
    source: Literal["reported", "physiology", "none"] = "none"


class BriefInputs(BaseModel):
    """One athlete's validated inputs for one brief date."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    athlete_id: str = Field(min_length=1, max_length=128)
    date: dt.date = Field(description="the brief date (UTC calendar day)")
    data_date: dt.date = Field(description="the day the morning values were recorded")
    recovery: float | None = Field(default=None, ge=0, le=100, description="%")
    sleep_score: float | None = Field(default=None, ge=0, le=100)
    sleep_hours: float | None = Field(default=None, ge=0, le=16)
    hrv_ms: float | None = Field(default=None, ge=5, le=250)
    hrv_delta_pct: float | None = Field(default=None, ge=-100, le=5000)
    resting_hr: float | None = Field(default=None, ge=25, le=120)
    rhr_delta_pct: float | None = Field(default=None, ge=-80, le=400)
    ctl: float = Field(default=0.0, ge=0, le=800)
    atl: float = Field(default=0.0, ge=0, le=800)
    tsb: float = Field(default=0.0, ge=-800, le=800)
    target_tss_low: float = Field(ge=0, le=800)
    target_tss_high: float = Field(ge=0, le=800)
    target_source: Literal["plan", "adaptive"] = "adaptive"
    planned_tss: float | None = Field(default=None, ge=0, le=800)
    planned_workout: str | None = Field(default=None, max_length=MAX_PLANNED_WORKOUT_CHARS)
    body_stress: BodyStress = Field(default_factory=BodyStress)
    tss_7d: float = Field(default=0.0, ge=0, le=7 * 800)
    sleep_debt_h: float | None = Field(default=None, ge=0, le=7 * 16)
    time_available_min: float | None = Field(default=None, ge=0, le=1440)
    alcohol: bool = False
    predicted_recovery: float | None = Field(
        default=None, ge=0, le=100, description="champion recovery model: tomorrow's score"
    )
    injury_risk: float | None = Field(
        default=None, ge=0, le=100, description="champion injury model: risk 0-100"
    )

    @model_validator(mode="after")
    def _target_ordered(self) -> BriefInputs:
        if self.target_tss_low > self.target_tss_high:
            raise ValueError(
                f"target_tss_low {self.target_tss_low} is above target_tss_high "
                f"{self.target_tss_high}"
            )
        return self


class BriefInputError(ValueError):
    """Input for one athlete is invalid; names the athlete, the field and the rule."""

    def __init__(self, athlete_id: str, day: dt.date | str, field_name: str, message: str):
        self.athlete_id = athlete_id
        self.date = str(day)
        self.field = field_name
        self.column = FIELD_COLUMNS.get(field_name.split(".")[0])
        self.message = message
        column = f" (column '{self.column}')" if self.column else ""
        super().__init__(
            f"athlete '{athlete_id}' on {self.date}: field '{field_name}'{column}: {message}"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable for process/Dask task runners
        return (type(self), (self.athlete_id, self.date, self.field, self.message))

    def as_dict(self) -> dict[str, str | None]:
        return {
            "athlete_id": self.athlete_id,
            "date": self.date,
            "field": self.field,
            "column": self.column,
            "message": self.message,
        }


def make_brief_inputs(**values: Any) -> BriefInputs:
    """Validate raw values into `BriefInputs`.

    Raises:
        BriefInputError: for the first invalid field, naming athlete, field and rule
            (all problems are listed in the message when there are several).
    """
    try:
        return BriefInputs(**values)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        loc = ".".join(str(p) for p in first["loc"]) or "inputs"
        parts = []
        for err in errors:
            where = ".".join(str(p) for p in err["loc"]) or "inputs"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            parts.append(f"{where}: {err['msg']}{shown}")
        raise BriefInputError(
            str(values.get("athlete_id", "?")), values.get("date", "?"), loc, "; ".join(parts)
        ) from exc


@dataclass
class InputsResult:
    """Inputs for every active athlete, plus who was left out and why."""

    inputs: list[BriefInputs] = field(default_factory=list)
    errors: list[BriefInputError] = field(default_factory=list)
    inactive: dict[str, str] = field(default_factory=dict)  # athlete_id -> reason


def severity_from_confidence(confidence: float | None) -> Severity:
    """Map a reported illness confidence (0-1) to a severity band."""
    if confidence is None:
        return "none"
    if confidence >= 0.7:
        return "high"
    if confidence >= 0.4:
        return "moderate"
    if confidence >= 0.2:
        return "low"
    return "none"


def assess_body_stress(
    illness_confidence: float | None, hrv_delta_pct: float | None, rhr_delta_pct: float | None
) -> BodyStress:
    """Combine the reported illness confidence with physiological strain.

    Why both: many sources have no illness flag, but a large HRV drop together with a
    raised resting HR is the classic early sign of a cold. The more severe of the two
    readings wins, so a clear report is never diluted by normal physiology.
    """
    reported = BodyStress(
        severity=severity_from_confidence(illness_confidence),
        confidence=float(illness_confidence or 0.0),
        source="reported" if illness_confidence is not None else "none",
    )
    hrv_drop = hrv_delta_pct is not None and hrv_delta_pct <= -25
    rhr_rise = rhr_delta_pct is not None and rhr_delta_pct >= 10
    if hrv_drop and rhr_rise:
        physiology = BodyStress(severity="moderate", confidence=0.6, source="physiology")
    elif hrv_drop or rhr_rise:
        physiology = BodyStress(severity="low", confidence=0.4, source="physiology")
    else:
        physiology = BodyStress()
    if SEVERITY_ORDER[physiology.severity] > SEVERITY_ORDER[reported.severity]:
        return physiology
    if reported.severity == "none" and reported.source == "none":
        return BodyStress()
    return reported


def round_to_5(value: float) -> float:
    """TSS targets are given in steps of 5: more precision is false precision."""
    return float(5 * round(value / 5))


def target_tss_range(
    planned_tss: float | None, ctl: float, recovery: float | None
) -> tuple[float, float, Literal["plan", "adaptive"]]:
    """Today's target TSS range: from the plan when there is one, else adaptive.

    The adaptive range centres on the chronic load (a day at CTL keeps fitness) scaled
    by recovery: 0.6x CTL at recovery 0, 1.0x at 50, 1.4x at 100, floored at a 30 TSS
    base so a newcomer still gets a meaningful ride.
    """
    if planned_tss is not None:
        if planned_tss < 20:
            return 0.0, 20.0, "plan"
        return round_to_5(0.9 * planned_tss), round_to_5(1.1 * planned_tss), "plan"
    base = max(ctl, 30.0)
    factor = 0.6 + 0.8 * ((50.0 if recovery is None else recovery) / 100.0)
    centre = min(base * factor, 700.0)
    return round_to_5(0.85 * centre), round_to_5(1.15 * centre), "adaptive"


NUMERIC_COLUMNS = (
    "hrv_ms",
    "resting_hr",
    "sleep_score",
    "sleep_hours",
    "tss",
    "planned_tss",
    "recovery_score",
    "illness_confidence",
    "alcohol",
    "time_available_min",
)


def _value(arrays: Mapping[str, np.ndarray], column: str, i: int) -> float | None:
    values = arrays.get(column)
    if values is None:
        return None
    v = float(values[i])
    return None if math.isnan(v) else v


def _delta_pct(today: float | None, history: np.ndarray) -> float | None:
    values = history[~np.isnan(history)]
    if today is None or len(values) < MIN_BASELINE_VALUES:
        return None
    baseline = float(values.mean())
    if baseline <= 0:
        return None
    return round(100.0 * (today / baseline - 1.0), 1)


def _athlete_arrays(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """One athlete's rows as day-sorted NumPy arrays (``_d`` = datetime64[D])."""
    days = pd.to_datetime(rows["date"]).to_numpy().astype("datetime64[D]")
    order = np.argsort(days, kind="stable")
    arrays: dict[str, np.ndarray] = {"_d": days[order]}
    for column in NUMERIC_COLUMNS:
        if column in rows:
            arrays[column] = pd.to_numeric(rows[column], errors="coerce").to_numpy(
                dtype=float, na_value=np.nan
            )[order]
    if "planned_workout" in rows:
        arrays["planned_workout"] = rows["planned_workout"].to_numpy(dtype=object)[order]
    return arrays


def athlete_brief_values(
    rows: pd.DataFrame | Mapping[str, np.ndarray], athlete_id: str, day: dt.date, max_age_days: int
) -> dict[str, Any] | str:
    """Raw brief values for one athlete (not yet validated), or why it is inactive.

    Args:
        rows: the athlete's canonical rows (any order), or `_athlete_arrays` of them.
        athlete_id: the athlete.
        day: the brief date.
        max_age_days: the newest row may be at most this many days before ``day``.
    """
    a = _athlete_arrays(rows) if isinstance(rows, pd.DataFrame) else rows
    d64 = np.datetime64(day, "D")
    dates = a["_d"]
    n_upto = int(np.searchsorted(dates, d64, side="right"))
    if n_upto == 0:
        return f"no data on or before {day.isoformat()}"
    t = n_upto - 1
    data_day = dates[t].astype(dt.date)
    age = (day - data_day).days
    if age > max_age_days:
        return (
            f"newest data is {data_day.isoformat()}, {age} days before {day.isoformat()} "
            f"(briefs.max_input_age_days={max_age_days})"
        )
    is_today = data_day == day
    window = (dates[:t] >= dates[t] - np.timedelta64(BASELINE_DAYS, "D"))
    window = np.concatenate([window, np.zeros(len(dates) - t, dtype=bool)])

    hrv = _value(a, "hrv_ms", t)
    rhr = _value(a, "resting_hr", t)
    hrv_delta = _delta_pct(hrv, a["hrv_ms"][window]) if "hrv_ms" in a else None
    rhr_delta = _delta_pct(rhr, a["resting_hr"][window]) if "resting_hr" in a else None

    # Training load from the days *before* the brief date, with gaps as rest days.
    n_before = int(np.searchsorted(dates, d64, side="left"))
    ctl = atl = tss_7d = 0.0
    if n_before and "tss" in a:
        first = dates[0]
        n_days = int((d64 - first).astype(int))
        series = np.full(n_days, np.nan)
        series[(dates[:n_before] - first).astype(int)] = a["tss"][:n_before]
        load = training_load(series)
        ctl, atl = float(load["ctl"][-1]), float(load["atl"][-1])
        tss_7d = float(np.nansum(series[-7:]))
    tsb = ctl - atl

    sleep_debt: float | None = None
    if "sleep_hours" in a:
        nights = a["sleep_hours"][:n_upto][dates[:n_upto] > dates[t] - np.timedelta64(7, "D")]
        nights = nights[~np.isnan(nights)]
        if len(nights):
            sleep_debt = round(float(np.clip(SLEEP_NEED_H - nights, 0, None).sum()), 1)

    recovery = _value(a, "recovery_score", t)
    planned_tss = _value(a, "planned_tss", t) if is_today else None
    low, high, target_source = target_tss_range(planned_tss, ctl, recovery)
    alcohol = _value(a, "alcohol", t)
    workout = None
    if is_today and "planned_workout" in a:
        raw = a["planned_workout"][t]
        if raw is not None and raw is not pd.NA and not (isinstance(raw, float) and raw != raw):
            workout = str(raw).strip()[:MAX_PLANNED_WORKOUT_CHARS] or None

    return {
        "athlete_id": athlete_id,
        "date": day,
        "data_date": data_day,
        "recovery": recovery,
        "sleep_score": _value(a, "sleep_score", t),
        "sleep_hours": _value(a, "sleep_hours", t),
        "hrv_ms": hrv,
        "hrv_delta_pct": hrv_delta,
        "resting_hr": rhr,
        "rhr_delta_pct": rhr_delta,
        "ctl": round(ctl, 1),
        "atl": round(atl, 1),
        "tsb": round(tsb, 1),
        "target_tss_low": low,
        "target_tss_high": high,
        "target_source": target_source,
        "planned_tss": planned_tss,
        "planned_workout": workout,
        "body_stress": assess_body_stress(
            _value(a, "illness_confidence", t), hrv_delta, rhr_delta
        ),
        "tss_7d": round(tss_7d, 1),
        "sleep_debt_h": sleep_debt,
        "time_available_min": _value(a, "time_available_min", t) if is_today else None,
        "alcohol": bool(alcohol is not None and alcohol >= 0.5),
    }


def compute_brief_inputs(
    frame: pd.DataFrame,
    day: dt.date,
    athlete_ids: Iterable[str] | None = None,
    *,
    max_age_days: int = 1,
    predictions: Mapping[str, Mapping[str, float]] | None = None,
) -> InputsResult:
    """Validated brief inputs for every active athlete on ``day``.

    Args:
        frame: canonical daily rows (``athlete_id``, ``date`` and the metric columns).
        day: the brief date (UTC calendar day).
        athlete_ids: only these athletes; an unknown id is reported as inactive.
        max_age_days: how stale the newest row may be before an athlete counts as
            inactive (a brief on last month's HRV would be confidently wrong).
        predictions: optional champion-model outputs per athlete
            (``predicted_recovery``, ``injury_risk``).

    Returns:
        Inputs, per-athlete validation errors and inactive athletes with the reason.
    """
    for column in ("athlete_id", "date"):
        if column not in frame:
            raise ValueError(f"brief inputs: the canonical frame has no '{column}' column")
    result = InputsResult()
    # Convert once, then slice per athlete: per-group pandas work would dominate.
    ids = frame["athlete_id"].astype("string").fillna("").to_numpy(dtype=object)
    days = pd.to_datetime(frame["date"]).to_numpy().astype("datetime64[D]")
    order = np.lexsort((days, ids))
    ids = ids[order]
    columns: dict[str, np.ndarray] = {"_d": days[order]}
    for column in NUMERIC_COLUMNS:
        if column in frame:
            columns[column] = pd.to_numeric(frame[column], errors="coerce").to_numpy(
                dtype=float, na_value=np.nan
            )[order]
    if "planned_workout" in frame:
        columns["planned_workout"] = frame["planned_workout"].to_numpy(dtype=object)[order]
    unique, starts = np.unique(ids, return_index=True)
    bounds = dict(zip(unique.tolist(), zip(starts.tolist(), [*starts[1:].tolist(), len(ids)],
                                            strict=True), strict=True))
    wanted = None if athlete_ids is None else list(dict.fromkeys(str(a) for a in athlete_ids))
    for athlete in wanted if wanted is not None else sorted(bounds):
        if athlete not in bounds:
            result.inactive[athlete] = "athlete not found in the data"
            continue
        lo, hi = bounds[athlete]
        arrays = {k: v[lo:hi] for k, v in columns.items()}
        values = athlete_brief_values(arrays, athlete, day, max_age_days)
        if isinstance(values, str):
            result.inactive[athlete] = values
            continue
        if predictions and athlete in predictions:
            for key in ("predicted_recovery", "injury_risk"):
                if key in predictions[athlete]:
                    values[key] = float(predictions[athlete][key])
        try:
            result.inputs.append(make_brief_inputs(**values))
        except BriefInputError as exc:
            result.errors.append(exc)
    return result
