"""Features and labels for the two network families (zones, injury), no look-ahead.

Each athlete's rows are laid on a continuous calendar first (`features.to_calendar`),
so "the last 42 days" really is 42 calendar days even with gaps. CTL/ATL start from
the first two weeks' mean TSS (`seeded_training_load`), not from 0.

**Zones.** A row is the morning of day *t*, before that day's ride. Features use days
<= *t-1*: best powers over the trailing 42 days, CTL/ATL as of yesterday, TSB, 28-day
TSS and riding days, plus the morning recovery score of day *t* and four inputs about
the last FTP test *before* day *t* (its result, days since, CTL change since, and the
change since then of CTL smoothed over `ADAPTATION_DAYS`, the load FTP has had time to
follow). The app has that test (it is the rider's FTP setting); the network predicts
the change from it. Excluding day *t* matters: a test ride's own 20-min effort *is* the label (FTP ~
95 % of it), so including it would leak the answer.

FTP is only measured on test days (every 2-6 weeks, each rider's own habit). The
dataset still labels every day (between two consecutive tests FTP is interpolated
linearly day by day; on test days the label is the measurement, flagged
``measured``), but the zone nets learn from the measured rows only
(`models.zones.measured_train_data`): interpolated labels share each test's noise
across a whole interval. Rows run from the day after the first test to the last test.
Interpolation needs the *next* test, so the chronological split is made on labelled
days with the validation/test cut moved onto a test day (`split_at_tests`): no
test-part measurement shapes a training or validation label.

**Zone gate rows are measured tests only.** The test part keeps only its days with an
actual FTP test (`NetDataset.test_idx`); its interpolated days are neither trained on
nor scored. Why: an interpolated label between tests *k* and *k+1* is
``(1-w)·test_k + w·test_(k+1)`` and shares test *k*'s measurement noise (~1.2 %, ~3 W)
with the baseline "FTP stays at test *k*", and it depends on the date of a test the
app cannot know yet. On that label even the simulator's latent FTP lost to the
last-test baseline on most riders (18/48 passing) - the score measured the label
construction, not the model. A measured test is what the app actually observes; its
noise is independent of the previous test, so "better than the last test" then means
better at what the next test will show. The price: a 15 % test part holds one or two
tests, so each rider's gate rests on one or two measurements (stated in the summary as
``n_test``; the run reports the share of riders passing, which averages that out).
The other three labels are fixed shares of FTP from the design's zone table: Z2
ceiling 75 %, Z4 floor 91 %, VO2max power 120 % (top of the VO2max zone). Baseline:
"FTP stays at the last test" (last measured FTP before day *t*).

**Injury.** A row is the end of day *t*: the 14 days *t-13..t* of eleven daily features
(load, form, ramp, HRV/RHR change from a baseline that ends yesterday, sleep, recovery,
days since the last injury). The label is 1 when an injury/overtraining event starts
within the next `INJURY_HORIZON` = 7 days (*t+1..t+7*); rows without 7 known days ahead
are dropped. Why 7 days: a load spike raises the injury risk over the *following week*
(the finding behind the ACWR rule, and how the simulator's hazard works: it follows a
~1-week memory of the warning signs), so "within a week" is the horizon on which the
warning signs are informative and a banner can still change the week's plan; a 1-day
label has ~1 % positives (too few to learn or score), and each event gives 7 positive
rows instead of 3. The split is chronological 70/15/15 with a 7-row embargo at the
end of train and validation, so no label of an earlier part looks at events inside a
later part. Missing daily values are carried forward (past only) and otherwise filled
with the train part's mean. Baseline: `warning_sign_score`, the number of the design's
warning signs active that day.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from veloready_pipeline.features import to_calendar
from veloready_pipeline.schema import POWER_COLUMNS, POWER_DURATIONS_S
from veloready_pipeline.split import split_chronological
from veloready_pipeline.training_load import ATL_DAYS, CTL_DAYS, ewma_load
from veloready_pipeline.zones_calc import VO2MAX_SHARE, Z2_CEILING_SHARE, Z4_FLOOR_SHARE

BEST_POWER_DAYS = 42
RECENT_DAYS = 28
ADAPTATION_DAYS = 10  # FTP catches up with a change in CTL over ~10 days (zones)
RIDE_TSS = 20.0  # a day with at least this much TSS counts as a riding day
BASELINE_DAYS = 28
INJURY_WINDOW = 14
INJURY_HORIZON = 7  # days ahead an injury label looks (see the module docstring)
LOAD_SEED_DAYS = 14  # CTL/ATL start from the mean TSS of the first two weeks
INJURY_MEMORY_DAYS = 90  # "days since the last injury" is capped here

FEATURE_NAMES_ZONES: list[str] = [
    *(f"best_{d}s_{BEST_POWER_DAYS}d" for d in POWER_DURATIONS_S),
    "ctl",
    "atl",
    "tsb",
    "recovery_score",
    f"tss_{RECENT_DAYS}d",
    f"ride_days_{RECENT_DAYS}d",
    "last_test_ftp_w",
    "days_since_test",
    "ctl_change_since_test",
    "adapted_ctl_change_since_test",
    "adapted_ctl",
]
ZONE_POWER_FEATURES: tuple[int, ...] = tuple(range(len(POWER_DURATIONS_S)))
ZONE_ANCHOR_FEATURE = FEATURE_NAMES_ZONES.index("last_test_ftp_w")
# The training-load response anchor (`models.zones.ZoneMLP`): the last test scaled by the
# relative change of the smoothed CTL since that test.
ZONE_LOAD_CHANGE_FEATURE = FEATURE_NAMES_ZONES.index("adapted_ctl_change_since_test")
ZONE_LOAD_LEVEL_FEATURE = FEATURE_NAMES_ZONES.index("adapted_ctl")
LABEL_NAMES_ZONES: list[str] = ["ftp_w", "z2_ceiling_w", "z4_floor_w", "vo2max_w"]
LABEL_SHARES_ZONES: tuple[float, ...] = (1.0, Z2_CEILING_SHARE, Z4_FLOOR_SHARE, VO2MAX_SHARE)

INJURY_HISTORY_DAYS = 180  # "prior injuries" counts onsets over this many days
WARNING_SIGN_NAMES: tuple[str, ...] = (
    "ctl_ramp_gt_5_per_week",
    "tsb_below_minus20_over_7_days",
    "hrv_falling_gt_10pct_7d",
    "rhr_rising_gt_5pct_7d",
    "sleep_below_70_over_3_days",
    "acwr_gt_1_5",
)

FEATURE_NAMES_INJURY: list[str] = [
    "tss",
    "ctl",
    "atl",
    "tsb",
    "acwr",
    "ctl_ramp_7d",
    "hrv_delta_pct",
    "rhr_delta_pct",
    "sleep_score",
    "recovery_score",
    "days_since_injury",
    # The design's six warning signs as the app computes them (0/1), each also as its
    # share of the last 7 days: a spike raises the risk over the following week.
    *WARNING_SIGN_NAMES,
    *(f"{s}_share_7d" for s in WARNING_SIGN_NAMES),
    "hrv_7d_change_pct",  # HRV suppression: this week's mean vs last week's
    "rhr_7d_change_pct",
    "tsb_days_below_minus20",
    "sleep_days_below_70",
    "sleep_debt_7d",  # own 28-day sleep-score baseline minus the last 7 days' mean
    "acwr_7d_mean",  # load spike held over the week (ACWR averaged over 7 days)
    "tsb_7d_mean",
    "warning_signs_7d_mean",  # the rule score averaged over the last 7 days
    "injured_last_14d",  # prior injury: an onset within the last 14 days (layoff)
    "injured_15_to_45d",  # ... 15-45 days ago (back from a layoff, re-injury window)
    f"injuries_{INJURY_HISTORY_DAYS}d",  # onsets within the last 180 days
]

MIN_FTP_TESTS = 3  # two test-to-test intervals: train+validation, then test
MIN_ROWS = {"train": 20, "val": 5, "test": 5}
MIN_TEST_FTP_TESTS = 1  # zones: measured FTP tests in the test part (the gate rows)


@dataclass
class NetDataset:
    """One athlete's arrays for one network family, split in time order.

    ``skip_reason`` is non-empty when no personal model can be trained (the arrays
    may then be empty); ``baseline`` holds each row's baseline prediction (zones: FTP
    of the last test; injury: warning-sign score) and ``measured`` marks rows whose
    label was measured rather than interpolated.
    """

    athlete_id: str
    family: str
    X: np.ndarray
    y: np.ndarray
    dates: np.ndarray
    feature_names: list[str]
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    baseline: np.ndarray
    measured: np.ndarray
    skip_reason: str = ""
    notes: list[str] = field(default_factory=list)

    def data_window(self) -> dict[str, str]:
        """First/last labelled day and the first test-part day (for lineage)."""
        if len(self.dates) == 0 or len(self.test_idx) == 0:
            return {}
        return {
            "start": str(self.dates[0]),
            "end": str(self.dates[-1]),
            "test_start": str(self.dates[self.test_idx[0]]),
        }


def _one_athlete(frame: pd.DataFrame, who: str) -> str:
    ids = frame["athlete_id"].unique() if "athlete_id" in frame else []
    if len(ids) != 1:
        raise ValueError(f"{who} expects the rows of exactly one athlete, got {list(ids)[:5]}")
    return str(ids[0])


def _col(cal: pd.DataFrame, name: str) -> pd.Series:
    if name in cal:
        return pd.to_numeric(cal[name], errors="coerce").astype(float)
    return pd.Series(np.nan, index=cal.index, dtype=float)


def seeded_training_load(tss: pd.Series) -> pd.DataFrame:
    """CTL, ATL, TSB (yesterday's CTL - ATL) and ACWR, started from a realistic level.

    `veloready_pipeline.training_load.training_load` starts CTL and ATL at 0, so a rider who
    was already training shows ACWR > 1.5 and a steep CTL ramp for weeks - two of the
    warning signs, falsely. Here both start at the mean TSS of the first
    `LOAD_SEED_DAYS` days. Those days all lie inside the first 14-day injury window
    and before the first zone label, so no label's future feeds a feature.
    """
    x = np.nan_to_num(tss.to_numpy(dtype=float), nan=0.0)
    start = float(x[:LOAD_SEED_DAYS].mean()) if len(x) else 0.0
    ctl = ewma_load(x, CTL_DAYS, start)
    atl = ewma_load(x, ATL_DAYS, start)
    tsb = np.concatenate([[0.0], (ctl - atl)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        acwr = np.where(ctl > 1e-6, atl / np.maximum(ctl, 1e-6), 1.0)
    return pd.DataFrame({"ctl": ctl, "atl": atl, "tsb": tsb, "acwr": acwr}, index=tss.index)


def _empty(athlete_id: str, family: str, names: list[str], reason: str, x_shape: tuple[int, ...],
           y_shape: tuple[int, ...]) -> NetDataset:
    none = np.array([], dtype=int)
    return NetDataset(athlete_id, family, np.zeros(x_shape, np.float32),
                      np.zeros(y_shape, np.float32), np.array([], dtype="datetime64[D]"), names,
                      none, none, none, np.array([]), np.array([], dtype=bool), reason)


# ------------------------------------------------------------------------ zones


def zone_feature_frame(athlete_frame: pd.DataFrame) -> pd.DataFrame:
    """Daily zone features on the calendar, each from data strictly before the day
    (the morning recovery score excepted), plus ``ftp_test_w`` for labelling and
    ``adapted_ctl`` (the smoothed CTL the change-since-test inputs are taken from)."""
    cal = to_calendar(athlete_frame)
    out = pd.DataFrame(index=cal.index)
    for d, col in zip(POWER_DURATIONS_S, POWER_COLUMNS, strict=True):
        past = _col(cal, col).shift(1)
        out[f"best_{d}s_{BEST_POWER_DAYS}d"] = past.rolling(BEST_POWER_DAYS, min_periods=1).max()
    tss = _col(cal, "tss")
    load = seeded_training_load(tss)
    out["ctl"] = load["ctl"].shift(1)
    out["atl"] = load["atl"].shift(1)
    out["tsb"] = load["tsb"]  # already yesterday's CTL - ATL
    out["recovery_score"] = _col(cal, "recovery_score").ffill(limit=3)
    past_tss = tss.fillna(0.0).shift(1)
    out[f"tss_{RECENT_DAYS}d"] = past_tss.rolling(RECENT_DAYS, min_periods=1).sum()
    out[f"ride_days_{RECENT_DAYS}d"] = (
        (past_tss >= RIDE_TSS).astype(float).rolling(RECENT_DAYS, min_periods=1).sum()
    )
    ftp = _col(cal, "ftp_test_w")
    tested = ftp.notna()
    # The last test strictly before day t (a test's own result is that day's label).
    out["last_test_ftp_w"] = ftp.shift(1).ffill()
    day_no = pd.Series(np.arange(len(cal), dtype=float), index=cal.index)
    out["days_since_test"] = day_no - day_no.where(tested).shift(1).ffill()
    out["ctl_change_since_test"] = out["ctl"] - out["ctl"].where(tested).shift(1).ffill()
    # Adaptation lags training: fitness gained this week shows in a test one to two
    # weeks later. CTL smoothed over `ADAPTATION_DAYS` (an EWMA of yesterday's CTL, so
    # still past-only) is the load the body has caught up with; its change since the
    # last test is the part of a CTL change that should already show in FTP.
    ctl_past = out["ctl"].bfill()  # day 0 has no yesterday: start from day 1's value
    adapted = pd.Series(ewma_load(ctl_past.to_numpy(), ADAPTATION_DAYS, float(ctl_past.iloc[0]))
                        if len(ctl_past) else np.array([]), index=cal.index)
    out["adapted_ctl_change_since_test"] = adapted - adapted.where(tested).shift(1).ffill()
    out["adapted_ctl"] = adapted  # today's level: the anchor's denominator (with the change)
    out["ftp_test_w"] = ftp
    return out


def build_zone_dataset(
    athlete_frame: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zone features, labels and dates for every labelled day of one athlete.

    Labelled days run from the first to the last FTP test; see the module docstring
    for the interpolation and why features stop the day before.

    Returns:
        ``X [n, len(FEATURE_NAMES_ZONES)]``, ``y [n, 4]`` (``LABEL_NAMES_ZONES``, W),
        ``dates [n]`` (datetime64[D]).
    """
    X, y, dates, _, _ = _zone_arrays(athlete_frame)
    return X, y, dates


def _zone_arrays(
    athlete_frame: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    _one_athlete(athlete_frame, "build_zone_dataset")
    feats = zone_feature_frame(athlete_frame)
    ftp = feats["ftp_test_w"]
    tests = ftp.dropna()
    n_feat = len(FEATURE_NAMES_ZONES)
    if len(tests) < 2:
        return (np.zeros((0, n_feat), np.float32), np.zeros((0, 4), np.float32),
                np.array([], dtype="datetime64[D]"), np.array([]), np.array([], dtype=bool))
    span = feats.loc[tests.index[0] : tests.index[-1]]
    label = span["ftp_test_w"].interpolate(method="time")
    last_test = span["ftp_test_w"].shift(1).ffill()  # most recent test strictly before t
    measured = span["ftp_test_w"].notna()
    X = span[FEATURE_NAMES_ZONES].to_numpy(dtype=np.float64)
    keep = np.isfinite(X).all(axis=1)
    X = X[keep]
    y = np.outer(label.to_numpy()[keep], LABEL_SHARES_ZONES)
    dates = span.index.to_numpy()[keep].astype("datetime64[D]")
    return (X.astype(np.float32), y.astype(np.float32), dates,
            last_test.to_numpy()[keep].astype(np.float64), measured.to_numpy()[keep])


def split_at_tests(dates: np.ndarray, measured: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Chronological split of labelled rows whose validation/test cut is an FTP-test day.

    The nominal 70/15/15 cut between validation and test is moved to the nearest test
    day, so every test-part label is interpolated between measurements at or after
    that cut: nothing a test label rests on was used to fit or select the model. The
    train/validation cut is also moved to a test day when one lies within 10 % of the
    rows of its nominal place; otherwise it stays put and the last training labels
    lean on a test inside the *validation* part (that makes the validation loss a
    little optimistic, never the test metrics). The test part is therefore whole
    test-to-test intervals and usually larger than 15 %; `make_zone_dataset` then
    keeps only its measured days (the last test of each interval) as gate rows.

    Returns:
        (train, validation, test) row indices, or None with fewer than
        `MIN_FTP_TESTS` tests.
    """
    n = len(dates)
    test_rows = np.flatnonzero(measured)  # tests after the first (rows start after it)
    if len(test_rows) < MIN_FTP_TESTS - 1 or n < 3:
        return None
    _, va, _ = split_chronological(n)
    inner = test_rows[:-1]  # the last test ends the test part
    cut2 = int(inner[np.argmin(np.abs(inner - va[-1]))])
    nominal1 = int(round((cut2 + 1) * 0.70 / 0.85)) - 1
    near = test_rows[(test_rows < cut2) & (np.abs(test_rows - nominal1) <= 0.10 * n)]
    cut1 = int(near[np.argmin(np.abs(near - nominal1))]) if len(near) else nominal1
    cut1 = min(max(cut1, 0), cut2 - 1)
    idx = np.arange(n)
    return idx[: cut1 + 1], idx[cut1 + 1 : cut2 + 1], idx[cut2 + 1 :]


def make_zone_dataset(athlete_frame: pd.DataFrame) -> NetDataset:
    """Features, labels, baseline and the test-day-aligned split for one athlete.

    Training and validation rows are every labelled day (interpolated labels); test
    rows are only the test part's measured FTP tests (see the module docstring).
    Athletes without power data, with fewer than `MIN_FTP_TESTS` FTP tests, too few
    training/validation rows or no measured test in the test part get a
    ``skip_reason`` (no personal zone model; the app keeps the rule-based zones from
    the last test).
    """
    athlete_id = _one_athlete(athlete_frame, "make_zone_dataset")
    names = list(FEATURE_NAMES_ZONES)
    shape_x, shape_y = (0, len(names)), (0, 4)
    power = [c for c in POWER_COLUMNS if c in athlete_frame]
    if not power or athlete_frame[power].notna().sum().sum() == 0:
        return _empty(athlete_id, "zones", names, "no power data (best_power_* columns empty)",
                      shape_x, shape_y)
    n_tests = int(athlete_frame["ftp_test_w"].notna().sum()) if "ftp_test_w" in athlete_frame \
        else 0
    if n_tests < MIN_FTP_TESTS:
        return _empty(athlete_id, "zones", names,
                      f"too few FTP tests: {n_tests} < {MIN_FTP_TESTS} (ftp_test_w); "
                      "the app keeps zones from the last test", shape_x, shape_y)
    X, y, dates, base, measured = _zone_arrays(athlete_frame)
    parts = split_at_tests(dates, measured)
    if parts is None:
        return _empty(athlete_id, "zones", names,
                      f"too few FTP tests with usable features: {int(measured.sum())} < "
                      f"{MIN_FTP_TESTS}", shape_x, shape_y)
    tr, va, te = parts
    # Gate rows: only the test part's measured FTP tests (see the module docstring);
    # the interpolated days of the test part are neither trained on nor scored.
    te = te[measured[te]]
    ds = NetDataset(athlete_id, "zones", X, y, dates, names, tr, va, te, base, measured)
    sizes = {"train": len(tr), "val": len(va)}
    short = [f"{k} {v} < {MIN_ROWS[k]} rows" for k, v in sizes.items() if v < MIN_ROWS[k]]
    if len(te) < MIN_TEST_FTP_TESTS:
        short.append(f"test {len(te)} < {MIN_TEST_FTP_TESTS} measured FTP tests")
    if short:
        ds.skip_reason = "too little labelled history: " + ", ".join(short)
    return ds


MIN_NOISE_TRIPLES = 8  # fewest test triples for a data-estimated FTP-test noise


def training_tests(ds: NetDataset) -> tuple[np.ndarray, np.ndarray]:
    """The rider's FTP tests a zone model may learn from: dates and watts, in order.

    Every test measured in the training part, and the test each training row counts
    from (its ``last_test_ftp_w``, dated ``days_since_test`` earlier): so the first
    test, which has no row of its own, is included. Nothing from validation or test.
    """
    tr = ds.train_idx
    if ds.family != "zones" or len(tr) == 0:
        return np.array([], dtype="datetime64[D]"), np.array([])
    since = ds.X[tr, FEATURE_NAMES_ZONES.index("days_since_test")].astype(int)
    prev_dates = ds.dates[tr] - since.astype("timedelta64[D]")
    own = tr[ds.measured[tr]]
    dates = np.concatenate([prev_dates, ds.dates[own]])
    watts = np.concatenate([ds.baseline[tr].astype(float), ds.y[own, 0].astype(float)])
    order = np.argsort(dates, kind="stable")
    dates, watts = dates[order], watts[order]
    first = np.concatenate([[True], dates[1:] != dates[:-1]])
    return dates[first], watts[first]


def estimate_ftp_test_noise_pct(datasets: Iterable[NetDataset]) -> tuple[float, int]:
    """An FTP test's measurement noise (SD, % of FTP) from the riders' own tests.

    For every three consecutive training-part tests of a rider, the middle one is
    compared with the straight line through its neighbours: with FTP locally linear
    in time the residual is noise only, with variance ``s^2 (1 + w^2 + (1-w)^2)``
    (``w`` = the middle test's position between its neighbours). Each residual is
    scaled to that unit variance and to percent of the middle test, and the pooled SD
    is taken robustly (1.4826 x median absolute value) so a rider whose FTP bent
    between tests does not dominate. Curvature left in FTP only inflates it (a looser
    margin is never hidden: the verdict prints it). Uses no validation or test rows
    and nothing the simulator hides.

    Returns:
        (noise in % of FTP, number of triples); NaN with fewer than
        `MIN_NOISE_TRIPLES` triples (the non-inferiority check then fails: no evidence).
    """
    scaled: list[float] = []
    for ds in datasets:
        dates, watts = training_tests(ds)
        if len(dates) < 3:
            continue
        t = dates.astype("datetime64[D]").astype(float)
        for k in range(1, len(t) - 1):
            w = (t[k] - t[k - 1]) / (t[k + 1] - t[k - 1])
            line = (1 - w) * watts[k - 1] + w * watts[k + 1]
            c = 1.0 + w**2 + (1 - w) ** 2
            scaled.append(100.0 * (watts[k] - line) / watts[k] / np.sqrt(c))
    if len(scaled) < MIN_NOISE_TRIPLES:
        return float("nan"), len(scaled)
    return float(1.4826 * np.median(np.abs(scaled))), len(scaled)


def _check_sizes(ds: NetDataset) -> NetDataset:
    sizes = {"train": len(ds.train_idx), "val": len(ds.val_idx), "test": len(ds.test_idx)}
    short = [f"{k} {v} < {MIN_ROWS[k]}" for k, v in sizes.items() if v < MIN_ROWS[k]]
    if short:
        ds.skip_reason = "too little labelled history: " + ", ".join(short) + " rows"
    return ds


# ------------------------------------------------------------------------ injury


def injury_daily_frame(athlete_frame: pd.DataFrame) -> pd.DataFrame:
    """The daily injury features and warning-sign inputs on the calendar (days <= t)."""
    cal = to_calendar(athlete_frame)
    out = pd.DataFrame(index=cal.index)
    tss = _col(cal, "tss")
    load = seeded_training_load(tss)
    out["tss"] = tss.fillna(0.0)
    for key in ("ctl", "atl", "tsb", "acwr"):
        out[key] = load[key]
    out["ctl_ramp_7d"] = out["ctl"] - out["ctl"].shift(7)
    for col, name in (("hrv_ms", "hrv_delta_pct"), ("resting_hr", "rhr_delta_pct")):
        raw = _col(cal, col)
        base = raw.shift(1).rolling(BASELINE_DAYS, min_periods=5).mean()
        out[name] = (raw - base) / base * 100.0
        weekly = raw.rolling(7, min_periods=3).mean()
        out[f"{col}_7d_change_pct"] = (weekly - weekly.shift(7)) / weekly.shift(7) * 100.0
    out["hrv_7d_change_pct"] = out["hrv_ms_7d_change_pct"]
    out["rhr_7d_change_pct"] = out["resting_hr_7d_change_pct"]
    out["sleep_score"] = _col(cal, "sleep_score")
    out["recovery_score"] = _col(cal, "recovery_score")
    # A missing input never extends nor starts a run (comparisons with NaN are False).
    out["tsb_days_below_minus20"] = _run_length(out["tsb"] < -20.0)
    out["sleep_days_below_70"] = _run_length(out["sleep_score"] < 70.0)
    injury = _col(cal, "injury")
    onset = (injury.fillna(0.0) > 0.5).to_numpy()
    since = np.empty(len(onset))
    count = float(INJURY_MEMORY_DAYS)
    for i, started in enumerate(onset):
        count = 0.0 if started else min(count + 1.0, INJURY_MEMORY_DAYS)
        since[i] = count
    out["days_since_injury"] = since  # day t counts an onset on day t itself (it is past)
    # Sleep debt: how far the last week's sleep score fell below the athlete's own
    # 28-day baseline before it (positive = debt).
    sleep = out["sleep_score"]
    sleep_base = sleep.shift(7).rolling(BASELINE_DAYS, min_periods=5).mean()
    out["sleep_debt_7d"] = sleep_base - sleep.rolling(7, min_periods=3).mean()
    onsets = pd.Series(onset.astype(float), index=cal.index)
    out["injured_last_14d"] = (since < 14).astype(float)
    out["injured_15_to_45d"] = ((since >= 14) & (since < 45)).astype(float)
    out[f"injuries_{INJURY_HISTORY_DAYS}d"] = onsets.rolling(INJURY_HISTORY_DAYS,
                                                             min_periods=1).sum()
    signs = _signs_of(out)
    for name in WARNING_SIGN_NAMES:
        out[name] = signs[name]
        out[f"{name}_share_7d"] = signs[name].rolling(7, min_periods=1).mean()
    out["acwr_7d_mean"] = out["acwr"].rolling(7, min_periods=1).mean()
    out["tsb_7d_mean"] = out["tsb"].rolling(7, min_periods=1).mean()
    out["warning_signs_7d_mean"] = signs.sum(axis=1).rolling(7, min_periods=1).mean()
    out["injury"] = injury
    return out


def _run_length(flag: pd.Series) -> np.ndarray:
    """Length of the current run of True values ending at each day."""
    runs = np.zeros(len(flag))
    count = 0
    for i, on in enumerate(flag.to_numpy()):
        count = count + 1 if on else 0
        runs[i] = count
    return runs


WARNING_SIGNS: tuple[str, ...] = WARNING_SIGN_NAMES


def warning_signs(athlete_frame: pd.DataFrame) -> pd.DataFrame:
    """Each of the design's six warning signs as a 0/1 column per calendar day.

    HRV and resting HR changes compare this week's mean with last week's (a single
    morning reading is too noisy to call a 10 % fall). A missing input never raises a
    sign.
    """
    return _signs_of(injury_daily_frame(athlete_frame))


def _signs_of(d: pd.DataFrame) -> pd.DataFrame:
    signs = pd.DataFrame(index=d.index)
    signs["ctl_ramp_gt_5_per_week"] = d["ctl_ramp_7d"] > 5.0
    signs["tsb_below_minus20_over_7_days"] = d["tsb_days_below_minus20"] > 7
    signs["hrv_falling_gt_10pct_7d"] = d["hrv_ms_7d_change_pct"] < -10.0
    signs["rhr_rising_gt_5pct_7d"] = d["resting_hr_7d_change_pct"] > 5.0
    signs["sleep_below_70_over_3_days"] = d["sleep_days_below_70"] > 3
    signs["acwr_gt_1_5"] = d["acwr"] > 1.5
    return signs.astype(float)


def warning_sign_score(athlete_frame: pd.DataFrame) -> np.ndarray:
    """Count of active warning signs (0-6) per calendar day: the rule-based baseline."""
    return warning_signs(athlete_frame).sum(axis=1).to_numpy()


def build_injury_dataset(
    athlete_frame: pd.DataFrame, window: int = INJURY_WINDOW, horizon: int = INJURY_HORIZON
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences of daily features and the next-``horizon``-days event label.

    Missing values are carried forward only (no train-mean fill here: that needs the
    split, see `make_injury_dataset`), so ``X`` may still hold NaN at the start.

    Returns:
        ``X [n, window, len(FEATURE_NAMES_INJURY)]``, ``y [n]`` (0/1), ``dates [n]``
        (the last day of each window).
    """
    X, y, dates, _ = _injury_arrays(athlete_frame, window, horizon)
    return X, y, dates


def _injury_arrays(
    athlete_frame: pd.DataFrame, window: int, horizon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    _one_athlete(athlete_frame, "build_injury_dataset")
    if window < 1 or horizon < 1:
        raise ValueError(f"window and horizon must be >= 1, got {window}, {horizon}")
    d = injury_daily_frame(athlete_frame)
    score = _signs_of(d).sum(axis=1).to_numpy()  # the same daily frame, built once
    daily = d[FEATURE_NAMES_INJURY].ffill().to_numpy(dtype=np.float64)
    events = d["injury"].fillna(0.0).to_numpy() > 0.5
    known = d["injury"].notna().to_numpy()
    n_days = len(d)
    ends = np.arange(window - 1, n_days - horizon)
    n_feat = len(FEATURE_NAMES_INJURY)
    if len(ends) == 0 or "injury" not in athlete_frame:
        return (np.zeros((0, window, n_feat), np.float32), np.zeros(0, np.float32),
                np.array([], dtype="datetime64[D]"), np.array([]))
    # A label needs all `horizon` future days to be known (recorded 0 or 1).
    fut = np.lib.stride_tricks.sliding_window_view(events[1:], horizon)[ends]
    fut_known = np.lib.stride_tricks.sliding_window_view(known[1:], horizon)[ends]
    ok = fut_known.all(axis=1)
    y = np.asarray(fut.any(axis=1), dtype=np.float32)  # [n] (0/1)
    X = np.lib.stride_tricks.sliding_window_view(daily, window, axis=0)[ends - window + 1]
    X = np.moveaxis(X, -1, 1)  # [n, window, feat]
    dates = d.index.to_numpy()[ends].astype("datetime64[D]")
    return (X[ok].astype(np.float32), y[ok], dates[ok], score[ends][ok])


def make_injury_dataset(
    athlete_frame: pd.DataFrame, window: int = INJURY_WINDOW, horizon: int = INJURY_HORIZON
) -> NetDataset:
    """Sequences, labels, warning-sign baseline and the embargoed split for one athlete.

    Athletes without an ``injury`` column or with too few windows get a
    ``skip_reason``; an athlete whose training part has no event still trains (the
    network learns a low, calibrated risk) and the run notes it.
    """
    athlete_id = _one_athlete(athlete_frame, "make_injury_dataset")
    names = list(FEATURE_NAMES_INJURY)
    shape_x = (0, window, len(names))
    if "injury" not in athlete_frame or athlete_frame["injury"].notna().sum() == 0:
        return _empty(athlete_id, "injury", names, "no injury records (injury column empty)",
                      shape_x, (0,))
    X, y, dates, score = _injury_arrays(athlete_frame, window, horizon)
    n = len(y)
    if n < sum(MIN_ROWS.values()) + 2 * horizon:
        return _empty(athlete_id, "injury", names,
                      f"too little history: {n} labelled {window}-day windows", shape_x, (0,))
    tr, va, te = split_chronological(n)
    tr, va = tr[: len(tr) - horizon], va[: max(0, len(va) - horizon)]
    # Fill what carrying forward could not (leading gaps, absent sensors) with the
    # training part's mean: past-only information, identical for every later row.
    # An input with no value at all in the training part (sensor absent) is filled with 0
    # and named in the notes below; sums and counts instead of nanmean, which warns there.
    fill = None
    if len(tr):
        flat = X[tr].reshape(-1, X.shape[-1])
        seen = np.isfinite(flat)
        count = seen.sum(axis=0)
        total = np.where(seen, flat, 0.0).sum(axis=0)
        fill = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        X = np.where(np.isnan(X), fill[None, None, :], X).astype(np.float32)
    notes = []
    missing = [nm for k, nm in enumerate(names) if not np.isfinite(X[..., k]).any()
               or np.nanstd(X[tr][..., k]) == 0]
    if missing:
        notes.append("constant or missing inputs: " + ", ".join(missing))
    if len(tr) and y[tr].sum() == 0:
        notes.append("no injury event in the training part")
    ds = NetDataset(athlete_id, "injury", X, y, dates, names, tr, va, te, score,
                    np.ones(n, dtype=bool), notes=notes)
    return _check_sizes(ds)
