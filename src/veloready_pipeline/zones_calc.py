"""Six power zones from FTP, lowered when the athlete is fatigued or under-recovered.

The boundaries are the design card's (share of FTP): recovery < 55 %, endurance
56-75 %, tempo 76-90 %, threshold 91-105 %, VO2max 106-120 %, anaerobic 121-150 %.
The 1 % gaps between zones are the design's and are kept as they are (the app rounds
watts for display, so a rider never lands "between" zones in practice).

Adjustments make the app's targets easier on bad days and never harder:

* TSB < -10 (carrying fatigue): every boundary drops 5 %;
* recovery score < 70: every boundary drops a *further* 3 %, applied on top of the
  fatigue drop (multiplicative: both together give x 0.95 x 0.97 = x 0.9215). A drop
  "on top of" the already lowered zones is how a coach would read "a further 3 %".

A missing TSB or recovery score (None/NaN) means "no evidence of fatigue" and gives
no adjustment: a missing sensor must not silently change a rider's targets.
"""

from __future__ import annotations

import math

ZONE_BOUNDS: dict[str, tuple[float, float]] = {
    "recovery": (0.0, 0.55),
    "endurance": (0.56, 0.75),
    "tempo": (0.76, 0.90),
    "threshold": (0.91, 1.05),
    "vo2max": (1.06, 1.20),
    "anaerobic": (1.21, 1.50),
}
ZONE_NAMES: tuple[str, ...] = tuple(ZONE_BOUNDS)

TSB_FATIGUE_THRESHOLD = -10.0
FATIGUE_DROP = 0.05
RECOVERY_THRESHOLD = 70.0
RECOVERY_DROP = 0.03

# The zone net's four outputs are these shares of FTP (its training labels).
Z2_CEILING_SHARE = ZONE_BOUNDS["endurance"][1]  # 0.75
Z4_FLOOR_SHARE = ZONE_BOUNDS["threshold"][0]  # 0.91
VO2MAX_SHARE = ZONE_BOUNDS["vo2max"][1]  # 1.20


def _present(value: float | None) -> bool:
    return value is not None and not math.isnan(float(value))


def adjustment_factor(tsb: float | None, recovery: float | None) -> float:
    """The multiplier applied to every zone boundary (1.0 = no adjustment)."""
    factor = 1.0
    if _present(tsb) and float(tsb) < TSB_FATIGUE_THRESHOLD:  # type: ignore[arg-type]
        factor *= 1.0 - FATIGUE_DROP
    if _present(recovery) and float(recovery) < RECOVERY_THRESHOLD:  # type: ignore[arg-type]
        factor *= 1.0 - RECOVERY_DROP
    return factor


def _check_watts(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive, finite number of watts, got {value!r}")
    return v


def compute_zones(
    ftp_w: float, tsb: float | None = None, recovery: float | None = None
) -> dict[str, tuple[float, float]]:
    """The six zones in watts for one athlete today.

    Args:
        ftp_w: functional threshold power in watts.
        tsb: today's training stress balance (CTL - ATL); None/NaN = unknown.
        recovery: today's recovery score 0-100; None/NaN = unknown.

    Returns:
        zone name -> (low W, high W), ordered from recovery to anaerobic.

    Raises:
        ValueError: if ``ftp_w`` is not a positive finite number.
    """
    ftp = _check_watts("ftp_w", ftp_w)
    factor = adjustment_factor(tsb, recovery)
    return {
        name: (ftp * low * factor, ftp * high * factor) for name, (low, high) in ZONE_BOUNDS.items()
    }


def zones_from_outputs(
    ftp_w: float,
    z2_ceiling_w: float,
    z4_floor_w: float,
    vo2max_w: float,
    tsb: float | None = None,
    recovery: float | None = None,
) -> dict[str, tuple[float, float]]:
    """The six zones from the zone net's four outputs.

    The net predicts FTP and three anchor boundaries. The anchors replace the FTP
    shares they stand for (endurance top, threshold bottom, VO2max top); every other
    boundary comes from FTP. The anchors are clipped so zones stay ordered and never
    overlap (a net could, in principle, output a Z2 ceiling above its Z4 floor).

    Raises:
        ValueError: if any output is not a positive finite number of watts.
    """
    ftp = _check_watts("ftp_w", ftp_w)
    z2 = _check_watts("z2_ceiling_w", z2_ceiling_w)
    z4 = _check_watts("z4_floor_w", z4_floor_w)
    vo2 = _check_watts("vo2max_w", vo2max_w)
    b = {name: [ftp * lo, ftp * hi] for name, (lo, hi) in ZONE_BOUNDS.items()}
    # Keep each anchor strictly inside its neighbours' FTP boundaries.
    b["endurance"][1] = min(max(z2, b["endurance"][0]), b["tempo"][0])
    b["threshold"][0] = max(min(z4, b["threshold"][1]), b["tempo"][1])
    b["vo2max"][1] = min(max(vo2, b["vo2max"][0]), b["anaerobic"][0])
    factor = adjustment_factor(tsb, recovery)
    return {name: (lo * factor, hi * factor) for name, (lo, hi) in b.items()}
