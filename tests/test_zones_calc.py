"""Zones from FTP: table tests of the design's boundaries and property tests."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veloready_pipeline.zones_calc import (
    ZONE_NAMES,
    adjustment_factor,
    compute_zones,
    zones_from_outputs,
)

ftps = st.floats(min_value=50, max_value=600, allow_nan=False)
tsbs = st.one_of(st.none(), st.floats(min_value=-80, max_value=60, allow_nan=False))
recs = st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False))


@pytest.mark.parametrize(
    ("zone", "low", "high"),
    [
        ("recovery", 0.0, 110.0),
        ("endurance", 112.0, 150.0),
        ("tempo", 152.0, 180.0),
        ("threshold", 182.0, 210.0),
        ("vo2max", 212.0, 240.0),
        ("anaerobic", 242.0, 300.0),
    ],
)
def test_design_boundaries_at_200w(zone: str, low: float, high: float) -> None:
    zones = compute_zones(200.0, tsb=0.0, recovery=80.0)
    assert zones[zone] == pytest.approx((low, high))


@pytest.mark.parametrize(
    ("tsb", "recovery", "factor"),
    [
        (0.0, 80.0, 1.0),
        (-10.0, 70.0, 1.0),  # thresholds are strict: -10 and 70 are not "below"
        (-10.01, 80.0, 0.95),
        (5.0, 69.9, 0.97),
        (-25.0, 40.0, 0.95 * 0.97),
        (None, None, 1.0),
        (float("nan"), float("nan"), 1.0),
        (-30.0, None, 0.95),
    ],
)
def test_adjustment_factor_table(tsb: float | None, recovery: float | None, factor: float) -> None:
    assert adjustment_factor(tsb, recovery) == pytest.approx(factor)
    zones = compute_zones(250.0, tsb, recovery)
    assert zones["threshold"][1] == pytest.approx(250.0 * 1.05 * factor)


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), float("inf")])
def test_bad_ftp_is_rejected_with_field_name(bad: float) -> None:
    with pytest.raises(ValueError, match="ftp_w"):
        compute_zones(bad)


def test_zones_from_outputs_uses_anchors_and_keeps_order() -> None:
    zones = zones_from_outputs(200.0, 148.0, 184.0, 236.0, tsb=0.0, recovery=90.0)
    assert zones["endurance"][1] == pytest.approx(148.0)
    assert zones["threshold"][0] == pytest.approx(184.0)
    assert zones["vo2max"][1] == pytest.approx(236.0)
    # A nonsensical anchor (Z2 ceiling above threshold) is clipped to keep zones ordered.
    weird = zones_from_outputs(200.0, 400.0, 10.0, 900.0)
    bounds = [b for name in ZONE_NAMES for b in weird[name]]
    assert bounds == sorted(bounds)
    with pytest.raises(ValueError, match="z4_floor_w"):
        zones_from_outputs(200.0, 150.0, -1.0, 240.0)


@given(ftps, ftps, tsbs, recs)
def test_zones_monotone_in_ftp(a: float, b: float, tsb: float | None, rec: float | None) -> None:
    lo, hi = sorted((a, b))
    z_lo, z_hi = compute_zones(lo, tsb, rec), compute_zones(hi, tsb, rec)
    for name in ZONE_NAMES:
        assert z_lo[name][0] <= z_hi[name][0] + 1e-9
        assert z_lo[name][1] <= z_hi[name][1] + 1e-9


@given(ftps, tsbs, recs)
def test_adjustments_never_raise_zones(ftp: float, tsb: float | None, rec: float | None) -> None:
    plain = compute_zones(ftp)
    adjusted = compute_zones(ftp, tsb, rec)
    for name in ZONE_NAMES:
        assert adjusted[name][0] <= plain[name][0] + 1e-9
        assert adjusted[name][1] <= plain[name][1] + 1e-9
        # ... and never drop more than both adjustments together.
        assert adjusted[name][1] >= plain[name][1] * 0.95 * 0.97 - 1e-9


@given(ftps, tsbs, recs)
def test_zones_are_ordered_and_positive_width(
    ftp: float, tsb: float | None, rec: float | None
) -> None:
    zones = compute_zones(ftp, tsb, rec)
    bounds = [b for name in ZONE_NAMES for b in zones[name]]
    assert all(math.isfinite(b) for b in bounds)
    assert bounds == sorted(bounds)
    assert all(zones[n][1] > zones[n][0] for n in ZONE_NAMES)
