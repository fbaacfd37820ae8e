"""Tiny hand-made canonical frames for unit tests (no simulator needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def toy_athlete(athlete_id: str = "a1", n: int = 150, seed: int = 0,
                noise: float = 3.0) -> pd.DataFrame:
    """One athlete whose tomorrow's recovery follows today's sleep and load (learnable)."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2026-01-01", periods=n, freq="D")
    sleep = rng.normal(75, 10, n).clip(0, 100)
    tss = rng.gamma(2, 30, n)
    rec = np.empty(n)
    rec[0] = 60
    for i in range(1, n):
        rec[i] = 0.6 * rec[i - 1] + 0.5 * sleep[i - 1] - 0.05 * tss[i - 1] + rng.normal(0, noise)
    return pd.DataFrame({
        "athlete_id": athlete_id,
        "date": dates,
        "recovery_score": rec.clip(0, 100),
        "sleep_score": sleep,
        "sleep_hours": rng.normal(7.5, 0.8, n).clip(3, 11),
        "tss": tss,
        "planned_tss": tss + rng.normal(0, 5, n),
        "resting_hr": rng.normal(50, 3, n),
        "hrv_ms": rng.normal(60, 8, n),
        "illness_confidence": np.zeros(n),
        "alcohol": (rng.random(n) < 0.1).astype(float),
    })


def toy_frame(n_athletes: int = 3, n: int = 150, seed: int = 0) -> pd.DataFrame:
    return pd.concat([toy_athlete(f"a{i}", n, seed + i) for i in range(n_athletes)],
                     ignore_index=True)
