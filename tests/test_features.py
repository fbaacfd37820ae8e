import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_data import toy_athlete
from veloready_pipeline.features import (
    RECOVERY_FEATURES,
    REST_LOAD_MIN_DAYS,
    REST_TSS,
    build_recovery_features,
    rest_threshold,
    sensor_note,
    to_calendar,
)

BASE = toy_athlete(n=80, seed=1)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(min_value=1, max_value=79), col=st.sampled_from(
    ["recovery_score", "sleep_score", "sleep_hours", "tss", "resting_hr", "hrv_ms", "alcohol",
     "planned_tss"]), value=st.floats(min_value=0, max_value=100))
def test_changing_any_day_never_changes_an_earlier_days_features(k, col, value):
    before = build_recovery_features(BASE).frame
    changed = BASE.copy()
    changed.loc[k, col] = value
    after = build_recovery_features(changed).frame
    cols = list(RECOVERY_FEATURES)
    day = BASE["date"].iloc[k]
    pd.testing.assert_frame_equal(before.loc[before.index < day, cols],
                                  after.loc[after.index < day, cols])


def test_label_is_next_calendar_day_target():
    f = build_recovery_features(BASE).frame
    np.testing.assert_allclose(f["label"].to_numpy()[:-1], BASE["recovery_score"].to_numpy()[1:])
    assert np.isnan(f["label"].iloc[-1])


def test_missing_days_become_gaps_not_shifts():
    gappy = BASE.drop(index=[10, 11, 12])
    cal = to_calendar(gappy)
    assert len(cal) == len(BASE)
    f = build_recovery_features(gappy).frame
    day9 = BASE["date"].iloc[9]
    assert np.isnan(f.loc[day9, "label"])  # tomorrow (day 10) is missing: no label


def test_hrv_delta_is_against_past_baseline():
    df = BASE.copy()
    df["hrv_ms"] = 60.0
    df.loc[50, "hrv_ms"] = 66.0
    f = build_recovery_features(df).frame
    assert f["hrv_delta_pct"].iloc[50] == pytest.approx(10.0)
    assert f["hrv_delta_pct"].iloc[49] == pytest.approx(0.0)


def test_missing_sensor_is_dropped_with_a_note():
    feats = build_recovery_features(BASE.drop(columns=["hrv_ms"]))
    assert "hrv_ms" not in feats.feature_names and "hrv_delta_pct" in feats.dropped
    assert "hrv" in sensor_note(feats)


@pytest.mark.parametrize("bad", ["two athletes", "no target"])
def test_bad_inputs_raise_clear_errors(bad):
    if bad == "two athletes":
        df = pd.concat([BASE, BASE.assign(athlete_id="a2")])
        with pytest.raises(ValueError, match="one athlete"):
            build_recovery_features(df)
    else:
        with pytest.raises(ValueError, match="a1: target column 'recovery_score'"):
            build_recovery_features(BASE.drop(columns=["recovery_score"]))


def test_days_since_rest_and_sleep_debt():
    df = BASE.copy()
    df["tss"] = 100.0
    df.loc[[20, 30], "tss"] = 0.0
    df["sleep_hours"] = 7.0
    f = build_recovery_features(df).frame
    assert f["days_since_rest"].iloc[20] == 0
    assert f["days_since_rest"].iloc[25] == 5
    assert f["sleep_debt_h"].iloc[40] == pytest.approx(7.0)


def test_no_training_log_means_unknown_load_not_rest():
    feats = build_recovery_features(BASE.assign(tss=np.nan, planned_tss=np.nan))
    for name in ("ctl", "atl", "tsb", "acwr", "days_since_rest"):
        assert name in feats.dropped
    assert "training load" in sensor_note(feats)


def test_non_tss_load_rests_on_its_own_scale():
    """Whoop-like Day Strain (0-21): no day is below the TSS rule's 20, yet rest days exist."""
    rng = np.random.default_rng(3)
    df = BASE.assign(tss=np.nan, planned_tss=np.nan)
    strain = np.where(np.arange(len(df)) % 7 == 0, 5.0, 13.0) + rng.normal(0, 0.8, len(df))
    df["load_au"] = strain
    feats = build_recovery_features(df)
    f = feats.frame
    assert feats.load_column == "load_au"
    assert "days_since_rest" not in feats.dropped and "ctl" not in feats.dropped
    assert f["tss"].tolist() == pytest.approx(strain.tolist())
    # The rule is only defined after REST_LOAD_MIN_DAYS earlier days (no look-ahead) ...
    assert f["days_since_rest"].iloc[:REST_LOAD_MIN_DAYS].isna().all()
    # ... then every 7th day (strain ~5) is a rest day, the others (~13) are not.
    later = f["days_since_rest"].iloc[14:]
    assert (later[np.arange(14, len(df)) % 7 == 0] == 0).all()
    assert later.max() == 6
    # The threshold sits between the two kinds of day, on the strain scale.
    limit = rest_threshold(f["tss"], "load_au").iloc[-1]
    assert 5.5 < limit < 11
    assert "training load from load_au" in sensor_note(feats)
    # TSS wins when both exist: the fixed REST_TSS rule applies.
    both = build_recovery_features(BASE.assign(load_au=strain))
    assert both.load_column == "tss"
    assert rest_threshold(both.frame["tss"], "tss").eq(REST_TSS).all()
    # No look-ahead: a huge load on day 60 changes nothing before it.
    spiked = df.copy()
    spiked.loc[60, "load_au"] = 21.0 * 50
    g = build_recovery_features(spiked).frame
    pd.testing.assert_frame_equal(g.iloc[:60], f.iloc[:60])
