"""Batched vs naive training of the zone nets and injury LSTMs, on the same athletes.

Usage::

    .venv/bin/python bench/nets_batched_vs_naive.py --athletes 100 --trials 20

For each family the batched path (`models.net_tuning.tune_batched`: one Optuna study per
chunk of athletes; a population network per architecture, then every athlete's copy
fine-tuned at once with a leading athlete dimension) runs on every athlete. On a
sample of each chunk (``--naive-share``) two naive references run, one athlete at a
time with plain `nn.Module`s:

* **naive loop** (`bench/naive_reference.tune_single`): what a per-athlete Python loop does -
  the athlete's own Optuna study with the same search space, sampler, trial budget and
  pruner, every trial a plain network fitted alone from a fresh initialisation (up to
  ``population_max_epochs``, same early stopping). This is the issue's "naive loop".
* **naive replay** (`bench/naive_reference.replay_naive`, ``--replay``): *the batched study's
  own trials* replayed one athlete at a time (same parameters, population networks,
  initial weights and stopping rule). It isolates what batching alone buys.

Per-athlete cost: batched = all seconds of the chunk (population fits included) /
athletes in it; naive loop = seconds / looped athletes; replay = the chunk's
population-fit seconds / athletes in it + loop seconds / sample. Both paths use
``torch.set_num_threads(1)``; times are process CPU seconds (wall in brackets) on a
shared, noisy 2-core machine, all measured side by side in one run. Final test
metrics of every path are printed on the same sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.naive_reference import replay_naive, tune_single  # noqa: E402
from veloready_pipeline.config import TrainingConfig, load_settings  # noqa: E402
from veloready_pipeline.features_nets import (  # noqa: E402
    NetDataset,
    make_injury_dataset,
    make_zone_dataset,
)
from veloready_pipeline.models.injury import (  # noqa: E402
    INJURY_FAMILY,
    evaluate_injury_model,
    safe_auroc,
)
from veloready_pipeline.models.net_tuning import (  # noqa: E402
    NetFamily,
    TunedAthlete,
    train_data,
    tune_batched,
)
from veloready_pipeline.models.zones import ZONE_FAMILY, evaluate_zone_model  # noqa: E402
from veloready_pipeline.simulate import simulate_athletes  # noqa: E402

FAMILIES: dict[str, tuple[NetFamily, Callable[..., NetDataset], Callable[..., Any]]] = {
    "zones": (ZONE_FAMILY, make_zone_dataset, evaluate_zone_model),
    "injury": (INJURY_FAMILY, make_injury_dataset, evaluate_injury_model),
}


@dataclass
class Timer:
    """CPU and wall seconds of a block."""

    cpu: float = 0.0
    wall: float = 0.0

    def __enter__(self) -> Timer:
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w


def summarise(family: str, datasets: Sequence[NetDataset], picks: Sequence[TunedAthlete],
              evaluate: Callable[..., Any]) -> dict[str, float]:
    """Median test metrics (and pooled AUROC for injury) of picked models."""
    rows = [evaluate(ds, p.model) for ds, p in zip(datasets, picks, strict=True)]
    if family == "zones":
        return {
            "median_rmse_w": float(np.median([m["rmse"] for m, _, _ in rows])),
            "median_mae_w": float(np.median([m["mae"] for m, _, _ in rows])),
            "median_last_test_rmse_w": float(np.median([b["last_test_rmse"] for _, b, _ in rows])),
        }
    y = np.concatenate([ds.y[ds.test_idx] for ds in datasets])
    risk = np.concatenate([r for _, _, r in rows])
    return {
        "pooled_auroc": safe_auroc(y, risk),
        "median_brier": float(np.median([m["brier"] for m, _, _ in rows])),
        "median_base_rate_brier": float(np.median([b["base_rate_brier"] for _, b, _ in rows])),
    }


def run_family(name: str, frames: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    family, make_dataset, evaluate = FAMILIES[name]
    config = TrainingConfig.from_settings(load_settings(
        seed=args.seed,
        tuning={"n_trials": args.trials, "sampler": args.sampler},
        execution={"chunk_size": args.chunk, "torch_threads": 1},
    ), family.name)
    datasets = [make_dataset(f) for f in frames.values()]
    ready = [d for d in datasets if not d.skip_reason]
    skipped = len(datasets) - len(ready)
    batched_t, naive_pop, naive_loop, single_t = Timer(), Timer(), Timer(), Timer()
    n_looped = 0
    sample_ds: list[NetDataset] = []
    sample_batched: list[TunedAthlete] = []
    sample_naive: list[TunedAthlete] = []
    sample_single: list[TunedAthlete] = []
    all_picks: list[TunedAthlete] = []
    per_chunk_pop: list[float] = []
    for start in range(0, len(ready), args.chunk):
        chunk = ready[start : start + args.chunk]
        with batched_t:
            picks, summary = tune_batched(family, [train_data(d) for d in chunk], config,
                                          batch_key=f"bench{start}")
        all_picks += picks
        k = max(1, round(len(chunk) * args.naive_share))
        only = list(range(k))
        with single_t:
            sample_single += [tune_single(family, train_data(chunk[i]), config)
                              for i in only]
        if args.replay:
            with Timer() as t_replay:
                naive, timing = replay_naive(family, [train_data(d) for d in chunk], config,
                                             summary["trials"], only=only)
            # Split the replay's CPU time between population fits and the loop by wall share.
            loop_share = timing["loop_seconds"] / max(t_replay.wall, 1e-9)
            naive_loop.cpu += t_replay.cpu * loop_share
            naive_loop.wall += timing["loop_seconds"]
            naive_pop.cpu += t_replay.cpu * (1 - loop_share)
            naive_pop.wall += t_replay.wall - timing["loop_seconds"]
            sample_naive += naive
        per_chunk_pop.append(summary["population_seconds"])
        n_looped += k
        sample_ds += [chunk[i] for i in only]
        sample_batched += [picks[i] for i in only]
    n = len(ready)
    per_b_cpu, per_b_wall = batched_t.cpu / n, batched_t.wall / n
    out: dict[str, Any] = {
        "family": name,
        "athletes": n,
        "skipped": skipped,
        "looped": n_looped,
        "batched_cpu_s": batched_t.cpu,
        "batched_wall_s": batched_t.wall,
        "per_athlete_batched_cpu": per_b_cpu,
        "per_athlete_batched_wall": per_b_wall,
        "per_athlete_single_cpu": single_t.cpu / n_looped,
        "per_athlete_single_wall": single_t.wall / n_looped,
        "ratio_single_cpu": single_t.cpu / n_looped / per_b_cpu,
        "ratio_single_wall": single_t.wall / n_looped / per_b_wall,
        "population_share_batched": sum(per_chunk_pop) / max(batched_t.wall, 1e-9),
        "metrics_batched_all": summarise(name, ready, all_picks, evaluate),
        "metrics_batched_sample": summarise(name, sample_ds, sample_batched, evaluate),
        "metrics_single_sample": summarise(name, sample_ds, sample_single, evaluate),
    }
    if args.replay:
        per_n_cpu = naive_pop.cpu / n + naive_loop.cpu / n_looped
        per_n_wall = naive_pop.wall / n + naive_loop.wall / n_looped
        out |= {
            "per_athlete_naive_cpu": per_n_cpu,
            "per_athlete_naive_wall": per_n_wall,
            "ratio_cpu": per_n_cpu / per_b_cpu,
            "ratio_wall": per_n_wall / per_b_wall,
            "metrics_replay_sample": summarise(name, sample_ds, sample_naive, evaluate),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--athletes", type=int, default=100)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--sampler", choices=["tpe", "grid"], default="tpe")
    parser.add_argument("--chunk", type=int, default=50, help="athletes per batched study")
    parser.add_argument("--naive-share", type=float, default=0.2,
                        help="share of each chunk also trained by the naive paths")
    parser.add_argument("--replay", action=argparse.BooleanOptionalAction, default=True,
                        help="also replay the batched trials one athlete at a time")
    parser.add_argument("--families", default="zones,injury")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    sim = simulate_athletes(args.athletes, args.days, seed=args.seed)
    frames = dict(tuple(sim.frame.groupby("athlete_id", sort=True)))
    print(f"{args.athletes} simulated athletes x {args.days} days, {args.trials} trials "
          f"({args.sampler}), chunks of {args.chunk}, torch threads 1; naive paths on "
          f"{args.naive_share:.0%} of each chunk; times are CPU seconds of this process "
          "(wall in brackets) on a shared, noisy 2-core machine")
    totals = {"b": 0.0, "s": 0.0, "n": 0.0}
    for name in args.families.split(","):
        r = run_family(name, frames, args)
        totals["b"] += r["per_athlete_batched_cpu"]
        totals["s"] += r["per_athlete_single_cpu"]
        totals["n"] += r.get("per_athlete_naive_cpu", 0.0)
        print(f"\n[{name}] {r['athletes']} athletes trained ({r['skipped']} skipped: too "
              f"little data), naive paths on {r['looped']} of them")
        print(f"  per-athlete training time  naive loop  : {r['per_athlete_single_cpu']:.3f} s "
              f"({r['per_athlete_single_wall']:.3f} s wall)  own study, nets fitted alone")
        if "per_athlete_naive_cpu" in r:
            print(f"  per-athlete training time  naive replay: {r['per_athlete_naive_cpu']:.3f} s "
                  f"({r['per_athlete_naive_wall']:.3f} s wall)  the batched trials, one "
                  "athlete at a time")
        print(f"  per-athlete training time  batched     : {r['per_athlete_batched_cpu']:.3f} s "
              f"({r['per_athlete_batched_wall']:.3f} s wall); population fits are "
              f"{r['population_share_batched']:.0%} of it")
        print(f"  batched vs naive loop  : {r['ratio_single_cpu']:.1f}x cheaper per athlete "
              f"(CPU; {r['ratio_single_wall']:.1f}x wall)")
        if "ratio_cpu" in r:
            print(f"  batched vs naive replay: {r['ratio_cpu']:.1f}x cheaper per athlete (CPU; "
                  f"{r['ratio_wall']:.1f}x wall) - batching alone")
        for key in ("metrics_single_sample", "metrics_replay_sample", "metrics_batched_sample",
                    "metrics_batched_all"):
            if key in r:
                vals = ", ".join(f"{k} {v:.3f}" for k, v in r[key].items())
                print(f"  {key.replace('metrics_', ''):<15}: {vals}")
    if len(args.families.split(",")) > 1:
        line = (f"\n[all families] per-athlete naive loop {totals['s']:.3f} s, batched "
                f"{totals['b']:.3f} s: {totals['s'] / totals['b']:.1f}x cheaper batched")
        if args.replay:
            line += (f"; naive replay {totals['n']:.3f} s: {totals['n'] / totals['b']:.1f}x")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
