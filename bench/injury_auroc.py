"""Injury family on simulated riders: pooled test AUROC against its two references.

Usage::

    nice -n 10 .venv/bin/python bench/injury_auroc.py --athletes 50 --days 180 \
        --seeds 7,1,2,3,4

Per seed the simulator draws the riders (``realistic`` profile), the pipeline builds
each rider's injury dataset (`features_nets.make_injury_dataset`) and trains the
injury family exactly as the weekly flow does (`models.injury.train_injury_models`
with the configured tuning). On the pooled test parts of every trained rider it
prints:

* ``model``: the pooled AUROC of the shipped risk (`pooled_injury_metrics`);
* ``warn``: the pooled AUROC of the rule-based warning-sign score on the same rows;
* ``sim``: the pooled AUROC of the simulator's own forecast from its hidden state
  (``injury_risk_ahead``, what the ``noise floor`` line's
  ``injury_auroc_oracle_horizon`` scores over all days) on the same rows - a
  reference only, never a model input;
* Brier of the model against the base-rate Brier (training-part event rate);
* pooled test onsets, onsets per rider, and how many riders used the personal
  adaptation rather than the population model (``personal``).

The last lines give the mean over seeds and the riders a cohort needs for the injury
gate's evidence (``gates.injury.min_events`` pooled test onsets) at the measured
onsets per rider.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import pandas as pd

from veloready_pipeline.config import TrainingConfig, load_settings
from veloready_pipeline.features_nets import make_injury_dataset
from veloready_pipeline.models.injury import (
    count_onsets,
    pooled_injury_metrics,
    safe_auroc,
    train_injury_models,
)
from veloready_pipeline.simulate import simulate_athletes


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, float]:
    settings = load_settings(seed=seed, tuning={"n_trials": args.trials})
    t0 = time.perf_counter()
    sim = simulate_athletes(args.athletes, args.days, seed=seed, profile="realistic")
    latent = sim.latent.set_index(["athlete_id", "date"])["injury_risk_ahead"]
    datasets = {str(aid): make_injury_dataset(rows)
                for aid, rows in sim.frame.groupby("athlete_id", sort=True)}
    results = train_injury_models(datasets, TrainingConfig.from_settings(settings, "injury"))
    pooled = pooled_injury_metrics(results.values())
    ys, sims = [], []
    onsets_per_rider = []
    personal = 0
    trained = 0
    for aid, r in results.items():
        ds = datasets[aid]
        if len(ds.test_idx):
            onsets_per_rider.append(count_onsets(ds.y[ds.test_idx]))
        if r.status != "trained":
            continue
        trained += 1
        personal += int(r.extra.get("adaptation", "population") != "population")
        dates = pd.to_datetime(ds.dates[ds.test_idx])
        ys.append(ds.y[ds.test_idx])
        sims.append(latent.loc[[(aid, d) for d in dates]].to_numpy())
    y, s = np.concatenate(ys), np.concatenate(sims)
    return {
        "seed": seed,
        "model": pooled.get("pooled_auroc", math.nan),
        "warn": pooled.get("pooled_warning_score_auroc", math.nan),
        "sim": safe_auroc(y, s),
        "brier": pooled.get("pooled_brier", math.nan),
        "base": pooled.get("pooled_base_rate_brier", math.nan),
        "onsets": pooled.get("pooled_n_onsets", math.nan),
        "per_rider": float(np.mean(onsets_per_rider)) if onsets_per_rider else math.nan,
        "trained": trained,
        "personal": personal,
        "oracle_all_days": sim.noise_floor.get("injury_auroc_oracle_horizon", math.nan),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--athletes", type=int, default=50)
    p.add_argument("--days", type=int, default=180)
    p.add_argument("--seeds", default="7,1,2,3,4")
    p.add_argument("--trials", type=int, default=20)
    args = p.parse_args(argv)
    rows = []
    print(f"{'seed':>4} {'model':>6} {'warn':>6} {'sim':>6} {'brier':>7} {'base':>7} "
          f"{'onsets':>6} {'/rider':>6} {'pers':>9} {'sim_all':>7} {'sec':>5}")
    for seed in (int(s) for s in args.seeds.split(",")):
        r = run_seed(seed, args)
        rows.append(r)
        print(f"{r['seed']:>4} {r['model']:6.3f} {r['warn']:6.3f} {r['sim']:6.3f} "
              f"{r['brier']:7.4f} {r['base']:7.4f} {r['onsets']:6.0f} {r['per_rider']:6.2f} "
              f"{r['personal']:>4}/{r['trained']:<4} {r['oracle_all_days']:7.3f} "
              f"{r['seconds']:5.0f}", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in
            ("model", "warn", "sim", "brier", "base", "onsets", "per_rider")}
    print(f"mean {mean['model']:6.3f} {mean['warn']:6.3f} {mean['sim']:6.3f} "
          f"{mean['brier']:7.4f} {mean['base']:7.4f} {mean['onsets']:6.1f} "
          f"{mean['per_rider']:6.2f}")
    need = load_settings().gates["injury"].min_events or 10
    if mean["per_rider"] > 0:
        print(f"riders for >= {need} pooled test onsets at {args.days} days: "
              f"{math.ceil(need / mean['per_rider'])} on average "
              f"(min onsets/rider over seeds {min(r['per_rider'] for r in rows):.2f})")
    ok = mean["model"] >= 0.80 and all(r["brier"] < r["base"] for r in rows)
    print("done-when (mean pooled AUROC >= 0.80, Brier < base rate every seed):",
          "met" if ok else "not met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
