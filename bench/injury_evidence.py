"""How many riders and days the injury gate's evidence needs: test-part onsets per rider.

Usage::

    nice -n 10 .venv/bin/python bench/injury_evidence.py --athletes 50 \
        --days 180,270,365 --seeds 7,1,2,3,4

No training: per seed and history length the simulator draws the riders (realistic
profile), the pipeline builds each rider's injury dataset (the same split as
training) and counts the distinct onsets in the test parts - the count the gate's
``min_events`` (pooled test onsets of the batch) is judged on. Printed: onsets per
rider (mean over seeds, and the lowest seed) and the riders a cohort needs for
``min_events`` at the mean and at the lowest seed's rate.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from veloready_pipeline.config import load_settings
from veloready_pipeline.features_nets import make_injury_dataset
from veloready_pipeline.models.injury import count_onsets
from veloready_pipeline.simulate import simulate_athletes


def onsets_per_rider(n: int, days: int, seed: int) -> float:
    sim = simulate_athletes(n, days, seed=seed, profile="realistic")
    counts = []
    for _, rows in sim.frame.groupby("athlete_id", sort=True):
        ds = make_injury_dataset(rows)
        if not ds.skip_reason:
            counts.append(count_onsets(ds.y[ds.test_idx]))
    return float(np.mean(counts)) if counts else math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--athletes", type=int, default=50)
    p.add_argument("--days", default="180,270,365")
    p.add_argument("--seeds", default="7,1,2,3,4")
    args = p.parse_args(argv)
    need = load_settings().gates["injury"].min_events or 10
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{'days':>5} " + " ".join(f"{'s' + str(s):>6}" for s in seeds)
          + f" {'mean':>6} {'riders@mean':>11} {'riders@min':>10}")
    for days in (int(d) for d in args.days.split(",")):
        per = [onsets_per_rider(args.athletes, days, s) for s in seeds]
        mean, low = float(np.mean(per)), float(np.min(per))
        print(f"{days:>5} " + " ".join(f"{v:6.3f}" for v in per)
              + f" {mean:6.3f} {math.ceil(need / mean):>11} {math.ceil(need / low):>10}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
