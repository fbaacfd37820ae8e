"""Recovery family on simulated riders: pooled-then-personal against the noise floor.

    nice -n 10 .venv/bin/python bench/recovery_pooled.py                 # seeds 7, 1, 2
    nice -n 10 .venv/bin/python bench/recovery_pooled.py --seeds 7 --easy-seeds 7

Per seed (``--athletes`` x ``--days``, realistic profile) it runs the flow's own
recovery stage - `training.fit_population` once over all riders, then
`training.train_family` per chunk of ``execution.chunk_size`` riders, the run's seed -
and prints, on each rider's untouched test part:

* the simulator's noise floor (``recovery_rmse``: tomorrow's score around its
  expectation given the full hidden state) and the median test RMSE / that floor;
* the share of riders whose model beats their own mean on test MAE (and RMSE), and
  beats tomorrow = today;
* how many riders ship the population / a personal model (picked on validation);
* the share whose paired-bootstrap MAE-gain interval lies above 0;
* for context, the same figures for the *oracle* - the simulator's own
  E[tomorrow | hidden state], which no model can see - on the same test rows: the
  ceiling of what a share "beating the mean" can be on ~27 noisy test days.

Then the easy profile (``--easy-seeds``): share of riders passing the gate (a model
passes only by beating RMSE < 8, MAE < 6, R² > 0.7 and both baselines in RMSE and MAE;
the registry registers exactly the passing ones) and a check that every passing model
beats both baselines in both metrics. The last lines compare with the issue's
"Done when" figures (median RMSE <= 1.04x the floor, >= 70 % beat their mean on MAE,
easy >= 80 % pass).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from veloready_pipeline import ingest, training  # noqa: E402
from veloready_pipeline.config import load_settings  # noqa: E402
from veloready_pipeline.results import ModelResult  # noqa: E402
from veloready_pipeline.simulate import simulate_athletes  # noqa: E402

RMSE_RATIO_MAX = 1.04
BEAT_MEAN_MAE_MIN = 0.70
EASY_PASS_MIN = 0.80


def run_stage(frame: Any, seed: int, trials: int | None) -> list[ModelResult]:
    """The flow's recovery stage: one population fit, then the chunks."""
    tuning = {"recovery_population_trials": trials} if trials else {}
    settings = load_settings(seed=seed, families=["recovery"], tuning=tuning)
    ids = sorted(frame["athlete_id"].astype(str).unique())
    population = training.fit_population("recovery", frame, ids, settings)
    out: list[ModelResult] = []
    for chunk in ingest.chunk_ids(ids, settings.execution.chunk_size):
        rows = frame[frame["athlete_id"].isin(chunk)]
        out += training.train_family("recovery", rows, chunk, settings, None, population)
    return out


def _errors(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    err = np.asarray(pred, dtype=float) - y
    return float(np.sqrt(np.mean(err**2))), float(np.mean(np.abs(err)))


def oracle_figures(sim: Any, results: list[ModelResult]) -> dict[str, float]:
    """The simulator's E[tomorrow | hidden state] scored like the models (context only)."""
    lat = sim.latent.set_index(["athlete_id", "date"])["recovery_expected_next"]
    rm, ma, beat_mae, beat_rmse = [], [], [], []
    for r in results:
        keys = [(r.athlete_id, np.datetime64(d, "ns")) for d in r.test_dates]
        pred = lat.reindex(keys).to_numpy(dtype=float)
        rmse, mae = _errors(pred, r.test_y)
        rm.append(rmse)
        ma.append(mae)
        beat_mae.append(mae < r.baselines["mean_mae"])
        beat_rmse.append(rmse < r.baselines["mean_rmse"])
    return {"median_rmse": float(np.median(rm)), "beat_mean_mae": float(np.mean(beat_mae)),
            "beat_mean_rmse": float(np.mean(beat_rmse))}


def seed_figures(sim: Any, results: list[ModelResult]) -> dict[str, Any]:
    trained = [r for r in results if r.status == "trained"]
    floor = float(sim.noise_floor["recovery_rmse"])
    rm = np.array([r.metrics["rmse"] for r in trained])
    ma = np.array([r.metrics["mae"] for r in trained])
    b = {k: np.array([r.baselines[k] for r in trained])
         for k in ("mean_rmse", "mean_mae", "persistence_rmse", "persistence_mae")}
    passed = [r for r in trained if r.passed]
    bad = [r.athlete_id for r in passed
           if not all(r.metrics[m] < r.baselines[f"{base}_{m}"]
                      for m in ("rmse", "mae") for base in ("mean", "persistence"))]
    oracle = oracle_figures(sim, trained)
    return {
        "athletes": len(results),
        "trained": len(trained),
        "noise_floor": floor,
        "median_rmse": float(np.median(rm)),
        "rmse_ratio": float(np.median(rm) / floor),
        "beat_mean_mae": float(np.mean(ma < b["mean_mae"])),
        "beat_mean_rmse": float(np.mean(rm < b["mean_rmse"])),
        "beat_persistence_mae": float(np.mean(ma < b["persistence_mae"])),
        "gain_ci_above_0": float(np.mean([r.metrics["mae_gain_ci_low"] > 0 for r in trained])),
        "kinds": dict(Counter(r.extra.get("model_kind") for r in trained)),
        "passed": len(passed),
        "passed_not_beating_baselines": bad,
        "oracle_median_rmse_ratio": oracle["median_rmse"] / floor,
        "oracle_beat_mean_mae": oracle["beat_mean_mae"],
        "oracle_beat_mean_rmse": oracle["beat_mean_rmse"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="7,1,2")
    ap.add_argument("--easy-seeds", default="7")
    ap.add_argument("--athletes", type=int, default=50)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--trials", type=int, default=None,
                    help="tuning.recovery_population_trials (default: the setting's)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    report: dict[str, dict[str, Any]] = {}
    runs = [("realistic", int(s)) for s in args.seeds.split(",") if s] + [
        ("easy", int(s)) for s in args.easy_seeds.split(",") if s]
    print(f"{'profile':9s} {'seed':>4s} {'floor':>6s} {'med rmse':>8s} {'ratio':>6s} "
          f"{'beat mean MAE':>13s} {'(RMSE)':>6s} {'beat pers MAE':>13s} {'CI>0':>5s} "
          f"{'pass':>5s} {'kinds':24s} {'oracle: ratio':>13s} {'beat MAE':>8s} {'sec':>5s}")
    for profile, seed in runs:
        sim = simulate_athletes(args.athletes, args.days, seed, profile)  # type: ignore[arg-type]
        started = time.perf_counter()
        results = run_stage(sim.frame, seed, args.trials)
        fig = seed_figures(sim, results) | {"seconds": time.perf_counter() - started}
        report[f"{profile}-{seed}"] = fig
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(fig["kinds"].items()))
        print(f"{profile:9s} {seed:4d} {fig['noise_floor']:6.2f} {fig['median_rmse']:8.2f} "
              f"{fig['rmse_ratio']:6.3f} {fig['beat_mean_mae']:13.0%} "
              f"{fig['beat_mean_rmse']:6.0%} {fig['beat_persistence_mae']:13.0%} "
              f"{fig['gain_ci_above_0']:5.0%} {fig['passed']:2d}/{fig['trained']:<2d} "
              f"{kinds:24s} {fig['oracle_median_rmse_ratio']:13.3f} "
              f"{fig['oracle_beat_mean_mae']:8.0%} {fig['seconds']:5.0f}", flush=True)
    print()
    for key, fig in report.items():
        profile = key.split("-")[0]
        if profile == "realistic":
            ok_r = fig["rmse_ratio"] <= RMSE_RATIO_MAX
            ok_m = fig["beat_mean_mae"] >= BEAT_MEAN_MAE_MIN
            print(f"{key}: median RMSE {fig['rmse_ratio']:.3f}x floor "
                  f"({'meets' if ok_r else 'MISSES'} <= {RMSE_RATIO_MAX}); beat own mean on "
                  f"MAE {fig['beat_mean_mae']:.0%} ({'meets' if ok_m else 'MISSES'} >= "
                  f"{BEAT_MEAN_MAE_MIN:.0%}; oracle {fig['oracle_beat_mean_mae']:.0%})")
        else:
            share = fig["passed"] / max(fig["trained"], 1)
            ok = share >= EASY_PASS_MIN and not fig["passed_not_beating_baselines"]
            print(f"{key}: {share:.0%} pass ({'meets' if ok else 'MISSES'} >= "
                  f"{EASY_PASS_MIN:.0%}); passing models not beating both baselines in "
                  f"RMSE and MAE: {fig['passed_not_beating_baselines'] or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
