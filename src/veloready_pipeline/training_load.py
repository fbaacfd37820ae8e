"""Training-load metrics (Coggan/Banister), pure NumPy so they are easy to test.

CTL is the 42-day and ATL the 7-day exponentially weighted mean of daily TSS,
TSB = CTL - ATL (yesterday's values: the form you start today with), and the
acute:chronic workload ratio ACWR = ATL / CTL. Each value on day *t* depends only on
days <= *t*, so they are safe as features.
"""

from __future__ import annotations

import numpy as np

CTL_DAYS = 42
ATL_DAYS = 7


def ewma_load(tss: np.ndarray, days: int, start: float = 0.0) -> np.ndarray:
    """Exponentially weighted load with time constant ``days``.

    Missing TSS (NaN) counts as a rest day (0): a missing day without a recorded
    ride is far more often a rest day than a lost ride.
    """
    x = np.nan_to_num(np.asarray(tss, dtype=float), nan=0.0)
    out = np.empty_like(x)
    alpha = 1.0 / days
    level = start
    for i, v in enumerate(x):
        level = level + alpha * (v - level)
        out[i] = level
    return out


def training_load(tss: np.ndarray) -> dict[str, np.ndarray]:
    """CTL, ATL, TSB and ACWR for a daily TSS series (oldest first)."""
    ctl = ewma_load(tss, CTL_DAYS)
    atl = ewma_load(tss, ATL_DAYS)
    tsb = np.concatenate([[0.0], (ctl - atl)[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        acwr = np.where(ctl > 1e-6, atl / np.maximum(ctl, 1e-6), 1.0)
    return {"ctl": ctl, "atl": atl, "tsb": tsb, "acwr": acwr}
