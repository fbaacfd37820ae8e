"""Zone and injury features/labels: shapes, labels, no look-ahead, splits, warning signs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloready_pipeline.features_nets import (
    FEATURE_NAMES_INJURY,
    FEATURE_NAMES_ZONES,
    INJURY_HORIZON,
    LABEL_NAMES_ZONES,
    MIN_FTP_TESTS,
    MIN_NOISE_TRIPLES,
    WARNING_SIGNS,
    build_injury_dataset,
    build_zone_dataset,
    estimate_ftp_test_noise_pct,
    make_injury_dataset,
    make_zone_dataset,
    split_at_tests,
    training_tests,
    warning_sign_score,
    warning_signs,
)
from veloready_pipeline.schema import POWER_COLUMNS
from veloready_pipeline.simulate import simulate_athletes


def net_athlete(athlete_id: str = "n1", days: int = 150, seed: int = 0,
                test_every: int = 30, power: bool = True) -> pd.DataFrame:
    """A tiny rider: load in blocks, FTP following CTL, sub-maximal efforts, tests, injuries."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2026-01-01", periods=days, freq="D")
    phase = np.sin(np.arange(days) / 15.0 + rng.uniform(0, 6))
    tss = np.where(rng.random(days) < 0.2, 0.0, rng.gamma(4, (60 + 25 * phase) / 4))
    ctl = pd.Series(tss).ewm(alpha=1 / 42, adjust=False).mean().to_numpy()
    ftp = rng.uniform(200, 300) * (0.9 + 0.2 * ctl / 60)
    share = np.array([2.6, 2.1, 1.9, 1.55, 1.35, 1.12, 1.0, 0.93])
    best = ftp[:, None] * share * rng.uniform(0.6, 0.95, (days, 8))
    best[tss == 0] = np.nan
    ftp_test = np.full(days, np.nan)
    for t in range(int(rng.integers(3, 10)), days, test_every):
        ftp_test[t] = round(ftp[t])
        best[t, 6] = ftp[t] / 0.95  # the test ride's all-out 20 min
    injury = np.zeros(days)
    injury[rng.choice(np.arange(30, days), size=3, replace=False)] = 1.0
    frame = pd.DataFrame({
        "athlete_id": athlete_id, "date": dates, "tss": tss,
        "hrv_ms": 60 + rng.normal(0, 4, days), "resting_hr": 50 + rng.normal(0, 1.5, days),
        "sleep_score": (78 + rng.normal(0, 8, days)).clip(0, 100),
        "recovery_score": (60 + rng.normal(0, 10, days)).clip(0, 100),
        "ftp_test_w": ftp_test, "injury": injury,
    })
    if power:
        for k, col in enumerate(POWER_COLUMNS):
            frame[col] = best[:, k]
    return frame


# ------------------------------------------------------------------------ zones


def test_zone_dataset_shapes_and_labels() -> None:
    frame = net_athlete()
    X, y, dates = build_zone_dataset(frame)
    assert X.shape == (len(y), len(FEATURE_NAMES_ZONES)) and y.shape[1] == len(LABEL_NAMES_ZONES)
    assert np.isfinite(X).all() and np.isfinite(y).all()
    # The other labels are the design's shares of FTP.
    np.testing.assert_allclose(y[:, 1:] / y[:, :1], [[0.75, 0.91, 1.20]] * len(y), rtol=1e-5)
    # On test days the label is the measurement; rows run from after the first test.
    tests = frame.set_index("date")["ftp_test_w"].dropna()
    on_test = np.isin(dates, tests.index.to_numpy().astype("datetime64[D]"))
    measured = tests.loc[pd.to_datetime(dates[on_test])].to_numpy()
    np.testing.assert_allclose(y[on_test, 0], measured, rtol=1e-6)
    assert dates[0] > np.datetime64(tests.index[0].date())
    assert dates[-1] == np.datetime64(tests.index[-1].date())


def test_zone_label_is_linear_between_tests() -> None:
    frame = net_athlete(seed=3)
    X, y, dates = build_zone_dataset(frame)
    tests = frame.set_index("date")["ftp_test_w"].dropna()
    t0, t1 = tests.index[1], tests.index[2]
    mid = t0 + (t1 - t0) / 2
    row = np.flatnonzero(dates == np.datetime64(mid.date()))[0]
    assert y[row, 0] == pytest.approx((tests[t0] + tests[t1]) / 2, abs=0.6)


def test_zone_features_ignore_the_day_itself_and_the_future() -> None:
    frame = net_athlete(seed=5)
    X, _, dates = build_zone_dataset(frame)
    test_day = frame.loc[frame["ftp_test_w"].notna(), "date"].iloc[2]
    changed = frame.copy()
    later = changed["date"] >= test_day
    # Change the test ride itself and everything after it (except the labels).
    changed.loc[later, list(POWER_COLUMNS)] *= 1.5
    changed.loc[later, "tss"] += 50
    X2, _, dates2 = build_zone_dataset(changed)
    upto = dates <= np.datetime64(test_day.date())
    np.testing.assert_array_equal(dates, dates2)
    # Everything up to and including the test day is unchanged except the morning
    # recovery score (not touched here).
    np.testing.assert_allclose(X[upto], X2[upto])
    assert not np.allclose(X[~upto], X2[~upto])


def test_zone_anchor_features_use_only_earlier_tests() -> None:
    frame = net_athlete(seed=2)
    X, _, dates = build_zone_dataset(frame)
    anchor = X[:, FEATURE_NAMES_ZONES.index("last_test_ftp_w")]
    days = X[:, FEATURE_NAMES_ZONES.index("days_since_test")]
    tests = frame.set_index("date")["ftp_test_w"].dropna()
    for date, a, d in zip(dates, anchor, days, strict=True):
        earlier = tests[tests.index < pd.Timestamp(date)]
        assert a == pytest.approx(earlier.iloc[-1])
        assert d == (pd.Timestamp(date) - earlier.index[-1]).days


def test_zone_split_cuts_on_test_days_and_keeps_order() -> None:
    ds = make_zone_dataset(net_athlete(seed=1, days=180))
    assert not ds.skip_reason
    tr, va, te = ds.train_idx, ds.val_idx, ds.test_idx
    assert tr.max() < va.min() <= va.max() < te.min()
    # Train and validation are every labelled day up to the cut, in order.
    assert np.array_equal(np.concatenate([tr, va]), np.arange(va[-1] + 1))
    # The validation part ends on a test day, and the test part ends on the last one.
    assert ds.measured[va[-1]] and te[-1] == len(ds.y) - 1
    # Baseline = last test before the day = the anchor input.
    np.testing.assert_allclose(ds.baseline, ds.X[:, FEATURE_NAMES_ZONES.index("last_test_ftp_w")])


def test_zone_test_rows_are_the_measured_tests_of_the_test_part_only() -> None:
    frame = net_athlete(seed=1, days=180, test_every=12)
    ds = make_zone_dataset(frame)
    assert not ds.skip_reason
    te = ds.test_idx
    assert len(te) >= 2 and ds.measured[te].all()
    # Every measured day after the cut is a test row; interpolated days there are in
    # no part at all (neither trained on nor scored).
    after = np.arange(ds.val_idx[-1] + 1, len(ds.y))
    np.testing.assert_array_equal(te, after[ds.measured[after]])
    unused = np.setdiff1d(np.arange(len(ds.y)), np.r_[ds.train_idx, ds.val_idx, te])
    assert len(unused) > 0 and not ds.measured[unused].any()
    # A test row's label is that day's measurement, its baseline the test before.
    tests = frame.set_index("date")["ftp_test_w"].dropna()
    for i in te:
        day = pd.Timestamp(ds.dates[i])
        assert ds.y[i, 0] == pytest.approx(tests[day])
        assert ds.baseline[i] == pytest.approx(tests[tests.index < day].iloc[-1])


def test_zone_adapted_ctl_change_follows_load_with_a_lag() -> None:
    # Constant load, then a step up the day after the second test.
    days = 120
    frame = net_athlete(seed=6, days=days, test_every=30)
    test_days = np.flatnonzero(frame["ftp_test_w"].notna().to_numpy())
    frame["tss"] = np.where(np.arange(days) > test_days[1], 120.0, 50.0)
    X, _, dates = build_zone_dataset(frame)
    raw = X[:, FEATURE_NAMES_ZONES.index("ctl_change_since_test")]
    adapted = X[:, FEATURE_NAMES_ZONES.index("adapted_ctl_change_since_test")]
    day_no = (dates - np.datetime64(frame["date"].iloc[0].date())).astype(int)
    flat = (day_no > test_days[0]) & (day_no <= test_days[1] + 1)
    np.testing.assert_allclose(raw[flat], 0.0, atol=1e-9)
    np.testing.assert_allclose(adapted[flat], 0.0, atol=1e-9)
    # After the step both rise, the adapted one later (it lags the load).
    rising = (day_no > test_days[1] + 2) & (day_no <= test_days[2])
    assert (raw[rising] > 0).all() and (adapted[rising] > 0).all()
    assert (adapted[rising] < raw[rising]).all()


def test_zone_labels_before_the_test_part_never_use_a_test_part_measurement() -> None:
    frame = net_athlete(seed=4, days=200)
    ds = make_zone_dataset(frame)
    cut = pd.Timestamp(ds.dates[ds.val_idx[-1]])
    changed = frame.copy()
    changed.loc[changed["date"] > cut, "ftp_test_w"] += 40.0  # different future tests
    ds2 = make_zone_dataset(changed)
    keep = np.r_[ds.train_idx, ds.val_idx]
    np.testing.assert_allclose(ds.y[keep], ds2.y[keep])
    np.testing.assert_allclose(ds.X[keep], ds2.X[keep])


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"power": False}, "no power data"), ({"test_every": 80}, "too few FTP tests")],
)
def test_zone_dataset_skips_with_a_reason(kwargs: dict, reason: str) -> None:
    ds = make_zone_dataset(net_athlete(**kwargs))
    assert reason in ds.skip_reason
    assert len(ds.train_idx) == 0


def test_zone_dataset_rejects_several_athletes() -> None:
    two = pd.concat([net_athlete("a"), net_athlete("b")])
    with pytest.raises(ValueError, match="exactly one athlete"):
        build_zone_dataset(two)


@settings(max_examples=60, deadline=None)
@given(st.integers(40, 300), st.lists(st.integers(1, 299), min_size=0, max_size=8))
def test_split_at_tests_properties(n: int, positions: list[int]) -> None:
    measured = np.zeros(n, dtype=bool)
    pos = sorted({p for p in positions if p < n})
    measured[pos] = True
    if pos:
        measured[-1] = True  # rows always end on the last test
    parts = split_at_tests(np.arange(n), measured)
    if measured.sum() < MIN_FTP_TESTS - 1:
        assert parts is None
        return
    assert parts is not None
    tr, va, te = parts
    assert len(tr) and len(va) and len(te)
    assert tr.max() < va.min() <= va.max() < te.min()
    assert np.array_equal(np.concatenate(parts), np.arange(n))
    assert measured[va[-1]]  # the cut before the test part is always a test day


# ------------------------------------------------------------------------ injury


def test_injury_dataset_shapes_and_label() -> None:
    frame = net_athlete(days=120)
    X, y, dates = build_injury_dataset(frame)
    assert X.shape[1:] == (14, len(FEATURE_NAMES_INJURY)) and len(y) == len(dates) == len(X)
    events = frame.set_index("date")["injury"]
    for k in (0, 30, len(y) - 1):
        day = pd.Timestamp(dates[k])
        ahead = events[(events.index > day)
                       & (events.index <= day + pd.Timedelta(days=INJURY_HORIZON))]
        assert y[k] == float(ahead.max() > 0)
    # Windows end at day 13 at the earliest and leave `horizon` days of future.
    assert dates[0] == np.datetime64("2026-01-14")
    assert dates[-1] == np.datetime64(
        (frame["date"].max() - pd.Timedelta(days=INJURY_HORIZON)).date())


def test_injury_features_do_not_look_ahead() -> None:
    frame = net_athlete(days=120, seed=7)
    X, _, dates = build_injury_dataset(frame)
    cut = pd.Timestamp(dates[60])
    changed = frame.copy()
    later = changed["date"] > cut
    changed.loc[later, ["tss", "hrv_ms", "resting_hr", "sleep_score", "recovery_score"]] *= 0.5
    changed.loc[later, "injury"] = 1.0
    X2, _, _ = build_injury_dataset(changed)
    np.testing.assert_allclose(X[:61], X2[:61])


def test_injury_split_has_an_embargo_and_no_nan() -> None:
    ds = make_injury_dataset(net_athlete(days=160, seed=2))
    assert not ds.skip_reason
    assert np.isfinite(ds.X).all()
    gap_tv = (ds.dates[ds.val_idx[0]] - ds.dates[ds.train_idx[-1]]).astype(int)
    gap_vt = (ds.dates[ds.test_idx[0]] - ds.dates[ds.val_idx[-1]]).astype(int)
    assert gap_tv > INJURY_HORIZON and gap_vt > INJURY_HORIZON


def test_injury_label_is_an_onset_within_the_next_week() -> None:
    assert INJURY_HORIZON == 7
    frame = net_athlete(days=100, seed=1)
    frame["injury"] = 0.0
    frame.loc[60, "injury"] = 1.0  # one onset, on day 60
    _, y, dates = build_injury_dataset(frame)
    onset = np.datetime64(frame.loc[60, "date"].date())
    lead = (onset - dates).astype(int)  # days from the row's end to the onset
    assert (y[(lead >= 1) & (lead <= 7)] == 1).all() and ((lead >= 1) & (lead <= 7)).sum() == 7
    # Negatives: 8+ days ahead (too early to warn), the onset day itself and after.
    assert (y[(lead > 7) | (lead <= 0)] == 0).all()


def test_injury_label_needs_every_day_of_the_horizon_recorded() -> None:
    frame = net_athlete(days=100, seed=1)
    frame["injury"] = 0.0
    frame.loc[70, "injury"] = np.nan  # no report that day: the 7 rows before are unknown
    _, _, dates = build_injury_dataset(frame)
    gap = np.datetime64(frame.loc[70, "date"].date())
    lead = (gap - dates).astype(int)
    assert not ((lead >= 1) & (lead <= 7)).any() and (lead == 8).any() and (lead == 0).any()


def test_days_since_injury_counts_from_the_onset() -> None:
    frame = net_athlete(days=100, seed=1)
    frame["injury"] = 0.0
    frame.loc[50, "injury"] = 1.0
    X, _, dates = build_injury_dataset(frame)
    col = FEATURE_NAMES_INJURY.index("days_since_injury")
    row = np.flatnonzero(dates == np.datetime64(frame.loc[55, "date"].date()))[0]
    assert X[row, -1, col] == 5.0
    assert X[0, -1, col] == 90.0  # capped: no injury seen yet


def test_injury_without_records_is_skipped() -> None:
    frame = net_athlete().drop(columns=["injury"])
    ds = make_injury_dataset(frame)
    assert "no injury records" in ds.skip_reason


def _flat(days: int = 60) -> pd.DataFrame:
    return pd.DataFrame({
        "athlete_id": "w", "date": pd.date_range("2026-01-01", periods=days),
        "tss": 60.0, "hrv_ms": 60.0, "resting_hr": 50.0, "sleep_score": 80.0,
        "recovery_score": 70.0, "injury": 0.0,
    })


@pytest.mark.parametrize(
    ("sign", "edit"),
    [
        ("ctl_ramp_gt_5_per_week", lambda f: f.assign(tss=np.where(f.index >= 40, 250.0, 60.0))),
        ("acwr_gt_1_5", lambda f: f.assign(tss=np.where(f.index >= 50, 200.0, 60.0))),
        ("tsb_below_minus20_over_7_days",
         lambda f: f.assign(tss=np.where(f.index >= 40, 160.0, 60.0))),
        ("hrv_falling_gt_10pct_7d", lambda f: f.assign(hrv_ms=np.where(f.index >= 50, 45.0, 60.0))),
        ("rhr_rising_gt_5pct_7d",
         lambda f: f.assign(resting_hr=np.where(f.index >= 50, 56.0, 50.0))),
        ("sleep_below_70_over_3_days",
         lambda f: f.assign(sleep_score=np.where(f.index >= 55, 60.0, 80.0))),
    ],
)
def test_each_warning_sign_fires_on_its_own(sign: str, edit) -> None:
    calm = warning_signs(_flat())
    assert calm.iloc[20:].sum().sum() == 0  # a steady rider shows no sign
    signs = warning_signs(edit(_flat()))
    assert signs[sign].iloc[-1] == 1.0
    assert set(signs.columns) == set(WARNING_SIGNS)
    assert warning_sign_score(edit(_flat()))[-1] >= 1


def test_missing_inputs_never_raise_a_sign() -> None:
    frame = _flat().assign(hrv_ms=np.nan, resting_hr=np.nan, sleep_score=np.nan)
    signs = warning_signs(frame)
    assert signs[["hrv_falling_gt_10pct_7d", "rhr_rising_gt_5pct_7d",
                  "sleep_below_70_over_3_days"]].sum().sum() == 0


def _linear_ftp_rider(seed: int, noise_pct: float, days: int = 240) -> pd.DataFrame:
    """A rider whose true FTP is a straight line; tests every 12 days with known noise."""
    frame = net_athlete(f"r{seed}", days=days, seed=seed, test_every=12)
    rng = np.random.default_rng(100 + seed)
    t = np.arange(days)
    true = 240.0 + 0.08 * t
    tested = frame["ftp_test_w"].notna().to_numpy()
    noisy = true * (1 + noise_pct / 100 * rng.standard_normal(days))
    frame["ftp_test_w"] = np.where(tested, noisy, np.nan)
    return frame


def test_ftp_test_noise_is_estimated_from_training_tests_only() -> None:
    riders = [make_zone_dataset(_linear_ftp_rider(s, 2.0)) for s in range(30)]
    noise, triples = estimate_ftp_test_noise_pct(riders)
    assert triples >= 300
    assert 1.5 < noise < 2.5  # the 2 % SD the tests were drawn with
    quiet = [make_zone_dataset(_linear_ftp_rider(s, 0.5)) for s in range(30)]
    assert estimate_ftp_test_noise_pct(quiet)[0] < 0.8
    # Validation and test measurements play no part: wreck them, same estimate.
    wrecked = []
    for s in range(30):
        frame = _linear_ftp_rider(s, 2.0)
        ds = make_zone_dataset(frame)
        late = frame["date"] > pd.Timestamp(ds.dates[ds.train_idx[-1]])
        frame.loc[late & frame["ftp_test_w"].notna(), "ftp_test_w"] *= 1.3
        wrecked.append(make_zone_dataset(frame))
    assert estimate_ftp_test_noise_pct(wrecked) == (noise, triples)
    # The first test (no row of its own) counts: it is the first training test.
    dates, watts = training_tests(riders[0])
    first = _linear_ftp_rider(0, 2.0).dropna(subset=["ftp_test_w"]).iloc[0]
    assert dates[0] == np.datetime64(first["date"].date())
    assert watts[0] == pytest.approx(first["ftp_test_w"], rel=1e-6)


def test_ftp_test_noise_needs_enough_triples() -> None:
    short = [make_zone_dataset(_linear_ftp_rider(s, 2.0, days=75)) for s in range(2)]
    noise, triples = estimate_ftp_test_noise_pct(short)
    assert triples < MIN_NOISE_TRIPLES and np.isnan(noise)


def test_injury_inputs_carry_the_warning_signs_and_prior_injury() -> None:
    # The six warning signs (as the rule score counts them), their 7-day shares and
    # the prior-injury inputs are network inputs, computed from past days only.
    from veloready_pipeline.features_nets import WARNING_SIGN_NAMES, injury_daily_frame

    frame = simulate_athletes(1, 120, seed=3).frame
    d = injury_daily_frame(frame)
    signs = warning_signs(frame)
    for name in WARNING_SIGN_NAMES:
        assert name in FEATURE_NAMES_INJURY and f"{name}_share_7d" in FEATURE_NAMES_INJURY
        np.testing.assert_array_equal(d[name].to_numpy(), signs[name].to_numpy())
        np.testing.assert_allclose(d[f"{name}_share_7d"].iloc[6],
                                   signs[name].iloc[:7].mean())
    np.testing.assert_allclose(d[list(WARNING_SIGN_NAMES)].sum(axis=1),
                               warning_sign_score(frame))
    since = d["days_since_injury"].to_numpy()
    np.testing.assert_array_equal(d["injured_last_14d"].to_numpy(), since < 14)
    onsets = (d["injury"].fillna(0) > 0.5).cumsum().to_numpy()
    np.testing.assert_array_equal(d["injuries_180d"].to_numpy(), onsets)  # < 180 days
