"""Calibration report for the physiological simulator.

Prints, for each profile: the statistics `describe_calibration` measures (to compare
with the ranges real wearable exports show), the noise floors, the simulation time for
a large cohort, and - with ``--xgb`` - what a plain per-athlete XGBoost reaches on
next-day recovery with a 70/15/15 chronological split, next to the noise floor and the
persistence / training-mean baselines. The XGBoost check uses its own small feature
builder so it does not depend on the pipeline's feature stage.

Usage:
    .venv/bin/python bench/calibrate_simulator.py --athletes 50 --days 180 --seed 7 [--xgb]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from veloready_pipeline.simulate import describe_calibration, simulate_athletes
from veloready_pipeline.training_load import training_load


def build_recovery_xy(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Today's features -> tomorrow's recovery for one athlete (calendar-aligned)."""
    df = rows.set_index("date").sort_index()
    df = df.reindex(pd.date_range(df.index.min(), df.index.max(), freq="D"))
    load = training_load(df["tss"].to_numpy())
    hrv_base = df["hrv_ms"].shift(1).rolling(7, min_periods=3).mean()
    rhr_base = df["resting_hr"].shift(1).rolling(7, min_periods=3).mean()
    rest = (df["tss"].fillna(0) < 1).astype(int)
    days_since_rest = rest.groupby(rest.cumsum()).cumcount()
    x = pd.DataFrame(
        {
            "recovery": df["recovery_score"],
            "sleep_score": df["sleep_score"],
            "hrv": df["hrv_ms"],
            "hrv_delta": df["hrv_ms"] / hrv_base - 1,
            "rhr": df["resting_hr"],
            "rhr_delta": df["resting_hr"] / rhr_base - 1,
            "tss": df["tss"],
            "planned_tss": df["planned_tss"],
            "ctl": load["ctl"],
            "atl": load["atl"],
            "tsb": load["tsb"],
            "sleep_debt": (8 - df["sleep_hours"]).rolling(7, min_periods=1).sum(),
            "days_since_rest": days_since_rest.to_numpy(),
            "illness": df["illness_confidence"],
            "dow": df.index.day_of_week,
            "trend3": df["recovery_score"] - df["recovery_score"].shift(3),
            "alcohol": df["alcohol"],
        },
        index=df.index,
    )
    y = df["recovery_score"].shift(-1)
    ok = y.notna() & df["athlete_id"].notna()
    return x[ok], y[ok]


def check_xgboost(frame: pd.DataFrame, seed: int) -> dict[str, float]:
    """Per-athlete XGBoost on a chronological 70/15/15 split; medians over athletes."""
    from xgboost import XGBRegressor

    rmse, r2, persist, mean_b = [], [], [], []
    grid = [(2, 0.05, 300), (3, 0.05, 200), (4, 0.03, 300)]
    for _, rows in frame.groupby("athlete_id", sort=True):
        x, y = build_recovery_xy(rows)
        n = len(y)
        a, b = int(n * 0.7), int(n * 0.85)
        best = None
        for depth, lr, n_est in grid:  # choose on validation only
            m = XGBRegressor(max_depth=depth, learning_rate=lr, n_estimators=n_est,
                             subsample=0.8, random_state=seed, n_jobs=1)
            m.fit(x.iloc[:a], y.iloc[:a])
            v = float(np.sqrt(np.mean((m.predict(x.iloc[a:b]) - y.iloc[a:b]) ** 2)))
            if best is None or v < best[0]:
                best = (v, m)
        assert best is not None
        yt = y.iloc[b:].to_numpy()
        pred = best[1].predict(x.iloc[b:])
        rmse.append(float(np.sqrt(np.mean((pred - yt) ** 2))))
        r2.append(float(1 - np.mean((pred - yt) ** 2) / np.var(yt)))
        today = x["recovery"].iloc[b:].to_numpy()
        okp = np.isfinite(today)
        persist.append(float(np.sqrt(np.mean((today[okp] - yt[okp]) ** 2))))
        mean_b.append(float(np.sqrt(np.mean((y.iloc[:a].mean() - yt) ** 2))))
    return {
        "xgb_test_rmse_median": float(np.median(rmse)),
        "xgb_test_r2_median": float(np.median(r2)),
        "persistence_rmse_median": float(np.median(persist)),
        "train_mean_rmse_median": float(np.median(mean_b)),
        "share_rmse_lt_8_r2_gt_0.7": float(np.mean((np.array(rmse) < 8) & (np.array(r2) > 0.7))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--athletes", type=int, default=50)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timing-athletes", type=int, default=1000)
    ap.add_argument("--xgb", action="store_true", help="also fit per-athlete XGBoost")
    args = ap.parse_args()

    report: dict[str, dict[str, float]] = {}
    for profile in ("realistic", "easy"):
        res = simulate_athletes(args.athletes, args.days, args.seed, profile)  # type: ignore[arg-type]
        row = {f"cal_{k}": v for k, v in describe_calibration(res.frame).items()}
        row.update({f"floor_{k}": v for k, v in res.noise_floor.items()})
        if args.xgb:
            row.update(check_xgboost(res.frame, args.seed))
        t0 = time.perf_counter()
        simulate_athletes(args.timing_athletes, args.days, args.seed, profile)  # type: ignore[arg-type]
        row[f"seconds_{args.timing_athletes}x{args.days}"] = time.perf_counter() - t0
        report[profile] = row
    print(json.dumps({k: {m: round(v, 4) for m, v in r.items()} for k, r in report.items()},
                     indent=2))


if __name__ == "__main__":
    main()
