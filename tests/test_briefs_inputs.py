"""Brief inputs: computed from canonical rows as of the morning, typed and validated."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from veloready_pipeline.briefs.inputs import (
    BriefInputError,
    assess_body_stress,
    compute_brief_inputs,
    make_brief_inputs,
    severity_from_confidence,
    target_tss_range,
)
from veloready_pipeline.training_load import training_load

DAY = dt.date(2026, 3, 10)


def athlete_rows(athlete: str = "a1", days: int = 20, end: dt.date = DAY, **today: object):
    """``days`` steady days ending on ``end``; ``today`` overrides the last row."""
    dates = pd.date_range(end=pd.Timestamp(end), periods=days, freq="D")
    frame = pd.DataFrame({
        "athlete_id": athlete,
        "date": dates,
        "hrv_ms": 60.0,
        "resting_hr": 50.0,
        "sleep_score": 80.0,
        "sleep_hours": 8.0,
        "tss": 50.0,
        "planned_tss": 60.0,
        "recovery_score": 70.0,
        "illness_confidence": 0.0,
        "alcohol": 0.0,
        "time_available_min": 120.0,
        "planned_workout": "Endurance 2h Z2",
    })
    for column, value in today.items():
        frame.loc[frame.index[-1], column] = value
    return frame


def only(result):
    assert not result.errors and not result.inactive, (result.errors, result.inactive)
    assert len(result.inputs) == 1
    return result.inputs[0]


def test_make_brief_inputs_names_athlete_field_and_column() -> None:
    with pytest.raises(BriefInputError) as info:
        make_brief_inputs(athlete_id="rider-7", date=DAY, data_date=DAY, recovery=140.0,
                          target_tss_low=50.0, target_tss_high=60.0)
    err = info.value
    assert (err.athlete_id, err.field, err.column) == ("rider-7", "recovery", "recovery_score")
    assert "rider-7" in str(err) and "recovery" in str(err) and "100" in str(err)


def test_input_error_survives_pickling() -> None:
    import pickle

    err = BriefInputError("a1", DAY, "sleep_score", "too high")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.field == "sleep_score"


def test_target_range_must_be_ordered() -> None:
    with pytest.raises(BriefInputError, match="target_tss_low"):
        make_brief_inputs(athlete_id="a1", date=DAY, data_date=DAY,
                          target_tss_low=90.0, target_tss_high=60.0)


def test_planned_workout_length_is_bounded() -> None:
    with pytest.raises(BriefInputError, match="planned_workout"):
        make_brief_inputs(athlete_id="a1", date=DAY, data_date=DAY, target_tss_low=1.0,
                          target_tss_high=2.0, planned_workout="x" * 1000)


def test_out_of_range_row_is_an_error_for_that_athlete_only() -> None:
    frame = pd.concat([athlete_rows("good"), athlete_rows("bad", resting_hr=300.0)])
    result = compute_brief_inputs(frame, DAY)
    assert [i.athlete_id for i in result.inputs] == ["good"]
    [err] = result.errors
    assert err.athlete_id == "bad" and err.field == "resting_hr"
    assert "bad" in str(err) and "resting_hr" in str(err)


def test_morning_values_and_deltas() -> None:
    frame = athlete_rows(hrv_ms=72.0, resting_hr=55.0, recovery_score=64.0, sleep_score=71.0)
    i = only(compute_brief_inputs(frame, DAY))
    assert i.recovery == 64.0 and i.sleep_score == 71.0
    assert i.hrv_delta_pct == pytest.approx(20.0)  # 72 vs a 60 ms baseline
    assert i.rhr_delta_pct == pytest.approx(10.0)  # 55 vs 50 bpm
    assert i.data_date == DAY


def test_delta_needs_three_baseline_readings() -> None:
    frame = athlete_rows(days=20)
    frame.loc[frame.index[:-1], "hrv_ms"] = np.nan
    frame.loc[frame.index[-3:-1], "hrv_ms"] = 60.0  # only two prior readings
    assert only(compute_brief_inputs(frame, DAY)).hrv_delta_pct is None


def test_load_uses_only_days_before_the_brief_date() -> None:
    frame = athlete_rows(days=30)
    with_big_today = athlete_rows(days=30, tss=500.0)
    a = only(compute_brief_inputs(frame, DAY))
    b = only(compute_brief_inputs(with_big_today, DAY))
    assert (a.ctl, a.atl, a.tsb, a.tss_7d) == (b.ctl, b.atl, b.tsb, b.tss_7d)
    load = training_load(np.full(29, 50.0))
    assert a.ctl == pytest.approx(load["ctl"][-1], abs=0.05)
    assert a.tss_7d == pytest.approx(350.0)


def test_missing_days_count_as_rest_days() -> None:
    frame = athlete_rows(days=30)
    gap = frame.drop(frame.index[10:15])
    zeros = frame.copy()
    zeros.loc[zeros.index[10:15], "tss"] = 0.0
    assert only(compute_brief_inputs(gap, DAY)).ctl == only(compute_brief_inputs(zeros, DAY)).ctl


def test_plan_and_time_come_from_the_days_own_row() -> None:
    i = only(compute_brief_inputs(athlete_rows(planned_tss=100.0, time_available_min=45.0), DAY))
    assert (i.target_tss_low, i.target_tss_high, i.target_source) == (90.0, 110.0, "plan")
    assert i.time_available_min == 45.0 and i.planned_workout == "Endurance 2h Z2"


def test_yesterdays_data_is_fine_but_has_no_plan_for_today() -> None:
    frame = athlete_rows(end=DAY - dt.timedelta(days=1))
    i = only(compute_brief_inputs(frame, DAY, max_age_days=1))
    assert i.data_date == DAY - dt.timedelta(days=1)
    assert i.planned_tss is None and i.target_source == "adaptive" and i.planned_workout is None


def test_stale_and_unknown_athletes_are_inactive_with_a_reason() -> None:
    frame = pd.concat([athlete_rows("fresh"), athlete_rows("stale", end=DAY - dt.timedelta(3))])
    result = compute_brief_inputs(frame, DAY, ["fresh", "stale", "ghost"], max_age_days=1)
    assert [i.athlete_id for i in result.inputs] == ["fresh"]
    assert "3 days before" in result.inactive["stale"]
    assert "not found" in result.inactive["ghost"]


def test_future_rows_are_never_used() -> None:
    frame = athlete_rows(days=30, end=DAY + dt.timedelta(days=5))
    frame.loc[frame["date"] > pd.Timestamp(DAY), "hrv_ms"] = 200.0
    i = only(compute_brief_inputs(frame, DAY))
    assert i.data_date == DAY and i.hrv_ms == 60.0


def test_sleep_debt_over_seven_nights() -> None:
    frame = athlete_rows(days=20)
    frame["sleep_hours"] = 7.0
    assert only(compute_brief_inputs(frame, DAY)).sleep_debt_h == pytest.approx(7.0)


def test_predictions_are_merged() -> None:
    preds = {"a1": {"predicted_recovery": 55.0, "injury_risk": 72.0}}
    i = only(compute_brief_inputs(athlete_rows(), DAY, predictions=preds))
    assert (i.predicted_recovery, i.injury_risk) == (55.0, 72.0)


def test_frame_without_date_is_rejected() -> None:
    with pytest.raises(ValueError, match="'date'"):
        compute_brief_inputs(pd.DataFrame({"athlete_id": ["a"]}), DAY)


@pytest.mark.parametrize(
    ("confidence", "severity"),
    [(None, "none"), (0.0, "none"), (0.19, "none"), (0.2, "low"), (0.4, "moderate"),
     (0.69, "moderate"), (0.7, "high"), (1.0, "high")],
)
def test_severity_bands(confidence: float | None, severity: str) -> None:
    assert severity_from_confidence(confidence) == severity


@pytest.mark.parametrize(
    ("illness", "hrv", "rhr", "severity", "source"),
    [
        (0.8, 0.0, 0.0, "high", "reported"),
        (None, -30.0, 12.0, "moderate", "physiology"),
        (None, -30.0, 0.0, "low", "physiology"),
        (0.1, 0.0, 12.0, "low", "physiology"),
        (0.5, -30.0, 12.0, "moderate", "reported"),  # ties keep the report
        (None, None, None, "none", "none"),
    ],
)
def test_body_stress(illness, hrv, rhr, severity, source) -> None:
    stress = assess_body_stress(illness, hrv, rhr)
    assert (stress.severity, stress.source) == (severity, source)


@pytest.mark.parametrize(
    ("planned", "ctl", "recovery", "expected"),
    [
        (100.0, 50.0, 70.0, (90.0, 110.0, "plan")),
        (10.0, 50.0, 70.0, (0.0, 20.0, "plan")),
        (None, 50.0, 50.0, (40.0, 55.0, "adaptive")),  # centre = CTL at recovery 50
        (None, 50.0, 100.0, (60.0, 80.0, "adaptive")),  # 1.4 x CTL
        (None, 0.0, None, (25.0, 35.0, "adaptive")),  # 30 TSS floor for a newcomer
    ],
)
def test_target_tss_range(planned, ctl, recovery, expected) -> None:
    assert target_tss_range(planned, ctl, recovery) == expected
