"""Recovery-family features and labels, computed per athlete with no look-ahead.

Each athlete's rows are laid on a continuous daily calendar (missing days become
rows of NaN, so "7 days ago" really is 7 days ago), then every feature for day *t* is
computed from days <= *t* only: rolling baselines are shifted by one day, loads are
causal EWMAs. The label is the *next calendar day's* target (``recovery_score`` by
default); next-day HRV and sleep score are kept alongside for analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from veloready_pipeline.training_load import training_load

BASELINE_DAYS = 28
FAST_BASELINE_DAYS = 10.0
SLEEP_NEED_H = 8.0
REST_TSS = 20.0
#: Rest days on a non-TSS load (``load_au``, e.g. Whoop Day Strain 0-21): a day is a rest
#: day when its load is below ``low + REST_LOAD_SHARE * (high - low)``, with ``low`` and
#: ``high`` the 5th and 90th percentiles of the athlete's *own* earlier days. For a
#: typical cyclist's TSS (low 0, high ~100) this is the REST_TSS of 20 again; on a
#: log-scaled strain (low ~4, high ~15) it is ~6, not an absolute 20 that no day reaches.
REST_LOAD_SHARE = 0.2
#: Earlier days of load needed before the relative rest threshold is defined.
REST_LOAD_MIN_DAYS = 7

RECOVERY_FEATURES: tuple[str, ...] = (
    "recovery_today",
    "sleep_score",
    "sleep_hours",
    "hrv_ms",
    "hrv_delta_pct",
    "resting_hr",
    "rhr_delta",
    "rhr_delta_pct",
    "tss",
    "planned_tss",
    "ctl",
    "atl",
    "tsb",
    "acwr",
    "sleep_debt_h",
    "days_since_rest",
    "illness_confidence",
    "day_of_week",
    "recovery_trend_3d",
    "hrv_gap_fast",
    "hrv_gap_week",
    "rhr_gap_week",
    "alcohol",
    "fatigue",
    "soreness",
    "stress",
    "mood",
)
# Features that only exist when a sensor does: dropped for an athlete without it.
SENSOR_GROUPS: dict[str, tuple[str, ...]] = {
    "hrv": ("hrv_ms", "hrv_delta_pct", "hrv_gap_fast", "hrv_gap_week"),
    "sleep_hours": ("sleep_hours", "sleep_debt_h"),
    "resting_hr": ("resting_hr", "rhr_delta", "rhr_delta_pct", "rhr_gap_week"),
    "wellness": ("fatigue", "soreness", "stress", "mood"),
    "training load": ("tss", "ctl", "atl", "tsb", "acwr", "days_since_rest"),
}


@dataclass
class AthleteFeatures:
    """One athlete's model-ready table."""

    athlete_id: str
    frame: pd.DataFrame  # calendar rows with features + label columns, indexed by date
    feature_names: list[str]
    dropped: dict[str, str] = field(default_factory=dict)  # feature -> reason
    load_column: str = "tss"  # the canonical column the load features come from

    def labelled(self) -> pd.DataFrame:
        """Rows that have a label (the next day exists and has a target value)."""
        return self.frame[self.frame["label"].notna() & self.frame["recovery_today"].notna()]


def to_calendar(athlete_rows: pd.DataFrame) -> pd.DataFrame:
    """Reindex one athlete's rows onto every calendar day between first and last."""
    rows = athlete_rows.sort_values("date").set_index("date")
    full = pd.date_range(rows.index.min(), rows.index.max(), freq="D")
    return rows.reindex(full)


def _col(cal: pd.DataFrame, name: str) -> pd.Series:
    if name in cal:
        return cal[name].astype(float)
    return pd.Series(np.nan, index=cal.index, dtype=float)


def daily_load(cal: pd.DataFrame) -> tuple[pd.Series, str]:
    """The day's training load and its column: ``tss`` when the athlete has any, else
    ``load_au`` (a non-TSS load) when it has any, else the (empty) ``tss``."""
    tss = _col(cal, "tss")
    if tss.notna().any():
        return tss, "tss"
    au = _col(cal, "load_au")
    if au.notna().any():
        return au, "load_au"
    return tss, "tss"


def rest_threshold(load: pd.Series, column: str) -> pd.Series:
    """Per day, the load below which the day is a rest day (no look-ahead).

    TSS: the fixed `REST_TSS`. A non-TSS load: `REST_LOAD_SHARE` of the way from the
    5th to the 90th percentile of the athlete's loads *before* that day (NaN until
    `REST_LOAD_MIN_DAYS` earlier days have a load), so the rule follows the load's own
    scale.
    """
    if column == "tss":
        return pd.Series(REST_TSS, index=load.index, dtype=float)
    past = load.shift(1).expanding(min_periods=REST_LOAD_MIN_DAYS)
    low, high = past.quantile(0.05), past.quantile(0.90)
    return low + REST_LOAD_SHARE * (high - low)


def _one_athlete_id(athlete_rows: pd.DataFrame, target: str) -> str:
    """The single athlete id of ``athlete_rows``; raises if they mix athletes or lack
    the target column."""
    ids = athlete_rows["athlete_id"].unique()
    if len(ids) != 1:
        raise ValueError(f"build_recovery_features expects one athlete, got {list(ids)[:5]}")
    athlete_id = str(ids[0])
    if target not in athlete_rows:
        raise ValueError(f"athlete {athlete_id}: target column {target!r} is absent")
    return athlete_id


def _add_heart_features(out: pd.DataFrame, cal: pd.DataFrame) -> pd.Series:
    """HRV and resting-HR features (raw, against a 28-day baseline, against a fast
    personal baseline) into ``out``; returns the HRV series (for the next-HRV label)."""
    hrv = _col(cal, "hrv_ms")
    hrv_base = hrv.shift(1).rolling(BASELINE_DAYS, min_periods=5).mean()
    out["hrv_ms"] = hrv
    out["hrv_delta_pct"] = (hrv - hrv_base) / hrv_base * 100.0
    rhr = _col(cal, "resting_hr")
    rhr_base = rhr.shift(1).rolling(BASELINE_DAYS, min_periods=5).mean()
    out["resting_hr"] = rhr
    out["rhr_delta"] = rhr - rhr_base
    out["rhr_delta_pct"] = (rhr - rhr_base) / rhr_base * 100.0
    # What wearables score: today's HRV against a fast-moving personal baseline (an
    # EWMA of log HRV over the previous days, ~10-day time constant), and the last
    # week's level against it (a slow HRV drift carries into tomorrow; one day's
    # value mostly does not). Same for resting HR.
    ln_hrv = np.log(hrv.where(hrv > 0))
    hrv_ewma = ln_hrv.shift(1).ewm(alpha=1.0 / FAST_BASELINE_DAYS, ignore_na=True,
                                   min_periods=5).mean()
    out["hrv_gap_fast"] = (ln_hrv - hrv_ewma) * 100.0
    out["hrv_gap_week"] = (ln_hrv.rolling(7, min_periods=3).mean() - hrv_ewma) * 100.0
    rhr_ewma = rhr.shift(1).ewm(alpha=1.0 / FAST_BASELINE_DAYS, ignore_na=True,
                                min_periods=5).mean()
    out["rhr_gap_week"] = rhr.rolling(7, min_periods=3).mean() - rhr_ewma
    return hrv


def _days_since_rest(load: pd.Series, column: str) -> np.ndarray:
    """Per day, the days since the last rest day (0 on a rest day; a missing load
    counts as 0, a rest day); NaN while `rest_threshold` has no rule yet."""
    threshold = rest_threshold(load, column).to_numpy()
    filled = load.fillna(0.0).to_numpy()
    since = np.zeros(len(filled))
    count = 0.0
    for i, (x, limit) in enumerate(zip(filled, threshold, strict=True)):
        if np.isnan(limit):  # no rest rule yet (too few earlier days of a non-TSS load)
            since[i] = np.nan
            continue
        count = 0.0 if x < limit else count + 1.0
        since[i] = count
    return since


def _add_load_features(out: pd.DataFrame, cal: pd.DataFrame) -> str:
    """Training-load features (tss, planned_tss, ctl/atl/tsb/acwr), sleep debt and days
    since rest into ``out``; returns the load's column (``tss`` or ``load_au``)."""
    tss, load_column = daily_load(cal)  # tss, or a non-TSS load_au when there is no tss
    out["tss"] = tss
    out["planned_tss"] = _col(cal, "planned_tss")
    has_load = bool(tss.notna().any())
    load = training_load(tss.to_numpy())
    for key, values in load.items():
        # No training log at all: load is unknown, not zero (features dropped below).
        out[key] = values if has_load else np.nan
    deficit = (SLEEP_NEED_H - out["sleep_hours"]).clip(lower=0)
    out["sleep_debt_h"] = deficit.rolling(7, min_periods=3).sum()
    since = _days_since_rest(tss, load_column)
    out["days_since_rest"] = since if has_load else np.nan
    return load_column


def _kept_features(out: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The recovery features with data on a labelled row, and the dropped ones."""
    labelled = out[out["label"].notna() & out["recovery_today"].notna()]
    dropped: dict[str, str] = {}
    names: list[str] = []
    for name in RECOVERY_FEATURES:
        if labelled[name].notna().sum() == 0:
            dropped[name] = "no data for this athlete"
        else:
            names.append(name)
    return names, dropped


def build_recovery_features(
    athlete_rows: pd.DataFrame, target: str = "recovery_score"
) -> AthleteFeatures:
    """Features and next-day label for one athlete.

    Args:
        athlete_rows: canonical rows of a single athlete (any order, gaps allowed).
        target: the canonical column to predict for tomorrow.

    Raises:
        ValueError: if the rows mix athletes or the target column is absent.
    """
    athlete_id = _one_athlete_id(athlete_rows, target)
    cal = to_calendar(athlete_rows)
    out = pd.DataFrame(index=cal.index)
    rec = _col(cal, target)
    out["recovery_today"] = rec
    out["sleep_score"] = _col(cal, "sleep_score")
    out["sleep_hours"] = _col(cal, "sleep_hours")
    hrv = _add_heart_features(out, cal)
    load_column = _add_load_features(out, cal)
    out["illness_confidence"] = _col(cal, "illness_confidence")
    out["day_of_week"] = cal.index.dayofweek.astype(float)
    out["recovery_trend_3d"] = rec - rec.shift(1).rolling(3, min_periods=2).mean()
    out["alcohol"] = _col(cal, "alcohol")
    for name in ("fatigue", "soreness", "stress", "mood"):
        out[name] = _col(cal, name)
    # Labels: tomorrow's values (the only place the future is allowed).
    out["label"] = rec.shift(-1)
    out["label_next_hrv"] = hrv.shift(-1)
    out["label_next_sleep_score"] = out["sleep_score"].shift(-1)
    out.index.name = "date"
    names, dropped = _kept_features(out)
    return AthleteFeatures(athlete_id, out, names, dropped, load_column)


def sensor_note(features: AthleteFeatures) -> str | None:
    """A short human note on which sensor groups were missing, or None."""
    missing = [
        group
        for group, cols in SENSOR_GROUPS.items()
        if all(c in features.dropped for c in cols)
    ]
    parts = []
    if missing:
        parts.append("trained without " + ", ".join(missing) + " features (no data)")
    if features.load_column != "tss":
        parts.append(f"training load from {features.load_column} (no TSS; its own scale, "
                     "rest days relative to the athlete's own load)")
    return "; ".join(parts) or None


# --------------------------------------------------------------- athlete-relative inputs
# A population model learns across athletes; what "a bad night" means differs per
# person. Each athlete's own level and spread of a signal, taken from the rows of their
# *training* part only (validation and test never shape them), turn today's raw values
# into deviations from that person's normal. The constants travel with the exported
# model (its metadata), so the app computes the same inputs from the same numbers.
RELATIVE_SIGNALS: tuple[str, ...] = (
    "recovery_today", "sleep_score", "sleep_hours", "hrv_ms", "resting_hr", "tss",
)
OWN_LEVEL_FEATURES: tuple[str, ...] = ("own_recovery_mean", "own_recovery_sd")
RELATIVE_FEATURES: tuple[str, ...] = OWN_LEVEL_FEATURES + tuple(
    f"{s}_z" for s in RELATIVE_SIGNALS)
POPULATION_RECOVERY_FEATURES: tuple[str, ...] = RECOVERY_FEATURES + RELATIVE_FEATURES
MIN_SD = {"recovery_today": 1.0, "sleep_score": 1.0, "sleep_hours": 0.1, "hrv_ms": 1.0,
          "resting_hr": 0.5, "tss": 5.0}


def athlete_baseline(rows: pd.DataFrame, train_idx: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and SD of each relative signal over an athlete's training rows only.

    Args:
        rows: the athlete's labelled rows (``AthleteFeatures.labelled()``), oldest first.
        train_idx: positions of the training part in ``rows``.

    Returns:
        ``{signal: {"mean": m, "sd": s}}``; a signal without data has NaN mean (its
        relative inputs are then missing, as the raw ones are). The SD has a floor per
        signal, so a nearly constant signal never divides by ~0.
    """
    out: dict[str, dict[str, float]] = {}
    part = rows.iloc[np.asarray(train_idx)]
    for s in RELATIVE_SIGNALS:
        values = part[s].astype(float) if s in part else pd.Series(dtype=float)
        values = values[np.isfinite(values)]
        mean = float(values.mean()) if len(values) else float("nan")
        sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out[s] = {"mean": mean, "sd": max(sd, MIN_SD[s]) if np.isfinite(sd) else MIN_SD[s]}
    return out


def relative_feature_frame(rows: pd.DataFrame,
                           baseline: dict[str, dict[str, float]]) -> pd.DataFrame:
    """The population model's inputs: the raw features (NaN where an athlete lacks a
    sensor) plus the athlete-relative ones computed with ``baseline``'s constants."""
    out = pd.DataFrame(index=rows.index)
    for name in RECOVERY_FEATURES:
        out[name] = rows[name].astype(float) if name in rows else np.nan
    rec = baseline["recovery_today"]
    out["own_recovery_mean"] = rec["mean"]
    out["own_recovery_sd"] = rec["sd"]
    for s in RELATIVE_SIGNALS:
        b = baseline[s]
        out[f"{s}_z"] = (out[s] - b["mean"]) / b["sd"]
    return out[list(POPULATION_RECOVERY_FEATURES)]
