"""How many riders *could* pass the zone gate: an oracle that knows the latent FTP.

Usage::

    .venv/bin/python bench/zones_ceiling.py --athletes 50 --days 180 --seeds 7,1,2 [--train]

For each seed the simulator draws the riders (``realistic`` profile), the pipeline
builds each rider's zone dataset (`features_nets.make_zone_dataset`: the chronological
split aligned on FTP-test days, gate rows = the test part's measured FTP tests) and
the pipeline's own zone gate (`gates.zone_verdict` with the configured
thresholds) judges the **oracle**: a "model" that predicts, for every scored test, the
simulator's hidden latent FTP of that day - the value the test itself measures, up to
the test's own noise. No model fitted on the rider's rows can do better on average,
so the oracle's pass share is the ceiling of the zones pass share on these riders.
A second reference, the **CTL rule**, needs no training: the last test scaled by the
change since that test of CTL smoothed over `features_nets.ADAPTATION_DAYS`,
``last_test x (1 + g x change / smoothed CTL at the test)`` with ``g`` =
``--ctl-gain`` (0 = the last test itself). It shows how much of the gap to the
oracle a one-line rule on the nets' own inputs closes. With ``--train`` the
pipeline's zone nets (`models.zones.train_zone_models`, the configured tuning) are
trained on the same riders and judged by the same gate, side by side. A **pooled
ridge** (one linear model over the seed's riders, fitted on the measured FTP tests of
their training and validation parts, the nets' inputs) is the simplest learned
reference. The bench ends with a table per seed: passes and pooled MAE on the scored
tests of each reference.

The gate is the pipeline's (`gates.zone_verdict`): absolute limits, non-inferiority to the
last test within one FTP-test noise (estimated from the seed's training-part tests, as
the pipeline does per batch) and, over the seed's scored riders pooled, an MAE better
than the last test's. Printed per seed: riders scored, passes, and why the rest failed
(threshold only / a last-test check only / both).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from veloready_pipeline.config import TrainingConfig, load_settings
from veloready_pipeline.features_nets import (
    ZONE_ANCHOR_FEATURE,
    ZONE_POWER_FEATURES,
    NetDataset,
    estimate_ftp_test_noise_pct,
    make_zone_dataset,
    zone_feature_frame,
)
from veloready_pipeline.gates import GateVerdict, regression_metrics, zone_verdict
from veloready_pipeline.simulate import simulate_athletes


def failure_kind(verdict: GateVerdict) -> str:
    """``passed``, ``threshold`` (RMSE/MAE limit only), ``baseline`` (only a last-test
    check: per-rider non-inferiority or the batch's pooled superiority) or ``both``."""
    if verdict.passed:
        return "passed"
    names = {c.name not in ("rmse", "mae") for c in verdict.failures}
    return "both" if names == {True, False} else "baseline" if True in names else "threshold"


class Reference:
    """One reference's FTP predictions on every scored rider of a seed, judged by the
    pipeline's zone gate once all are in (the pooled superiority check needs the
    whole batch)."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def add(self, ds: NetDataset, pred: np.ndarray) -> None:
        te = ds.test_idx
        self.rows[ds.athlete_id] = (ds.y[te, 0].astype(float), np.asarray(pred, float),
                                    ds.baseline[te].astype(float))

    def pooled(self, noise_pct: float) -> dict[str, float]:
        y, p, b = (np.concatenate([r[k] for r in self.rows.values()]) for k in range(3))
        return {"pooled_mae": float(np.mean(np.abs(p - y))),
                "pooled_last_test_mae": float(np.mean(np.abs(b - y))),
                "ftp_test_noise_pct": noise_pct}

    def verdicts(self, noise_pct: float, thresholds: Any) -> Counter[str]:
        pooled = self.pooled(noise_pct)
        out: Counter[str] = Counter()
        for y, p, b in self.rows.values():
            base = regression_metrics(y, b)
            out[failure_kind(zone_verdict(
                regression_metrics(y, p),
                {"last_test_rmse": base["rmse"], "last_test_mae": base["mae"],
                 "last_test_ftp_w": float(b.mean())}, pooled, thresholds))] += 1
        return out


def oracle_pred(ds: NetDataset, latent_ftp: dict[Any, float]) -> np.ndarray:
    """The latent FTP on every scored test day."""
    return np.array([latent_ftp[d] for d in ds.dates[ds.test_idx]], dtype=float)


def ctl_rule_pred(ds: NetDataset, rows: pd.DataFrame, gain: float) -> np.ndarray:
    """The CTL rule (module docstring) on the scored tests."""
    feats = zone_feature_frame(rows).loc[[pd.Timestamp(d) for d in ds.dates[ds.test_idx]]]
    change = feats["adapted_ctl_change_since_test"].to_numpy()
    at_test = feats["adapted_ctl"].to_numpy() - change  # smoothed CTL on the last test day
    return feats["last_test_ftp_w"].to_numpy() * (1 + gain * change / at_test)


def ridge_preds(datasets: dict[str, NetDataset], alpha: float = 1.0) -> dict[str, np.ndarray]:
    """A pooled ridge on the *measured* test rows of every rider's training and
    validation parts: the nets' inputs (best powers as shares of the last test, the
    rest as they are, standardised) -> relative change of FTP from the last test."""
    anchor, n_ratio = ZONE_ANCHOR_FEATURE, len(ZONE_POWER_FEATURES)

    def design(X: np.ndarray) -> np.ndarray:
        X = X.astype(float).copy()
        X[:, :n_ratio] /= X[:, anchor : anchor + 1]
        return X

    rows = [np.concatenate([ds.train_idx, ds.val_idx]) for ds in datasets.values()]
    fit = [(ds, r[ds.measured[r]]) for ds, r in zip(datasets.values(), rows, strict=True)
           if len(ds.X)]
    X = np.concatenate([design(ds.X[r]) for ds, r in fit])
    y = np.concatenate([ds.y[r, 0] / ds.baseline[r] - 1.0 for ds, r in fit])
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    w = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (y - y.mean()))
    out = {}
    for aid, ds in datasets.items():
        te = ds.test_idx
        if len(te):
            rel = y.mean() + ((design(ds.X[te]) - mu) / sd) @ w
            out[aid] = ds.baseline[te] * (1.0 + rel)
    return out


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(seed=seed, tuning={"n_trials": args.trials})
    thresholds = settings.gates["zones"]
    sim = simulate_athletes(args.athletes, args.days, seed=seed, profile="realistic")
    latent = dict(tuple(sim.latent.groupby("athlete_id", sort=False)))
    datasets: dict[str, NetDataset] = {}
    frames: dict[str, pd.DataFrame] = {}
    for aid, rows in sim.frame.groupby("athlete_id", sort=True):
        datasets[str(aid)] = make_zone_dataset(rows)
        frames[str(aid)] = rows
    scored = {a: ds for a, ds in datasets.items() if not ds.skip_reason}
    if thresholds.ftp_test_noise_pct is None:
        noise_pct, triples = estimate_ftp_test_noise_pct(datasets.values())
    else:
        noise_pct, triples = thresholds.ftp_test_noise_pct, 0
    refs = {"oracle": Reference(), "rule": Reference(), "last": Reference(),
            "ridge": Reference()}
    ridge = ridge_preds(datasets)
    n_tests: list[int] = []
    close_last = 0
    errors: list[np.ndarray] = []
    for aid, ds in scored.items():
        lat = latent[aid]
        days = lat["date"].to_numpy().astype("datetime64[D]")
        by_day = dict(zip(days, lat["ftp_w"].to_numpy(), strict=True))
        pred = oracle_pred(ds, by_day)
        refs["oracle"].add(ds, pred)
        refs["rule"].add(ds, ctl_rule_pred(ds, frames[aid], args.ctl_gain))
        refs["last"].add(ds, ds.baseline[ds.test_idx])
        refs["ridge"].add(ds, ridge[aid])
        te = ds.test_idx
        errors.append(pred - ds.y[te, 0])
        n_tests.append(len(te))
        close_last += float(np.abs(ds.y[te, 0] - ds.baseline[te]).min()) <= 2.0
    out: dict[str, Any] = {
        "seed": seed,
        "riders": len(datasets),
        "scored": len(scored),
        "skipped": len(datasets) - len(scored),
        "tests_per_rider": Counter(n_tests),
        "last_test_within_2w": close_last,
        "oracle_rmse": float(np.sqrt(np.mean(np.concatenate(errors) ** 2))),
        "test_noise_rmse": sim.noise_floor["ftp_rmse_w"],
        "noise_pct": noise_pct,
        "noise_triples": triples,
    }
    if args.train:
        from veloready_pipeline.models.zones import train_zone_models

        t0 = time.perf_counter()
        results = train_zone_models(datasets, TrainingConfig.from_settings(settings, "zones"))
        out["train_seconds"] = time.perf_counter() - t0
        refs["model"] = Reference()
        for aid, ds in scored.items():
            refs["model"].add(ds, results[aid].test_pred[:, 0])
    out["verdicts"] = {k: ref.verdicts(noise_pct, thresholds) for k, ref in refs.items()}
    out["pooled"] = {k: ref.pooled(noise_pct)["pooled_mae"] for k, ref in refs.items()}
    out["refs"] = refs
    return out


def share(c: Counter[str], n: int, riders: int) -> str:
    return (f"{c['passed']}/{n} = {c['passed'] / max(n, 1):.0%} of scored riders pass "
            f"({c['passed'] / max(riders, 1):.0%} of all {riders}); failed on threshold "
            f"only {c['threshold']}, on the last-test baseline only {c['baseline']}, on both "
            f"{c['both']}")


LABELS = {"oracle": "oracle (latent FTP)", "rule": "CTL rule", "last": "last test itself",
          "ridge": "pooled ridge", "model": "zone nets"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--athletes", type=int, default=50)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--seeds", default="7,1,2")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--ctl-gain", type=float, default=0.25,
                        help="g of the CTL rule (0: the last test itself)")
    parser.add_argument("--train", action="store_true",
                        help="also train the pipeline's zone nets and gate them")
    args = parser.parse_args(argv)
    print(f"{args.athletes} realistic riders x {args.days} days per seed; gate = the "
          "configured zone gate (absolute limits, per-rider non-inferiority to the last test "
          "within the data-estimated test noise, pooled MAE beating the last test's over the "
          "seed's scored riders); oracle = the simulator's latent FTP on each scored test day")
    totals: dict[str, Counter[str]] = {}
    pooled_all: dict[str, Reference] = {}
    n_total = riders_total = 0
    table: list[str] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        r = run_seed(seed, args)
        n = r["scored"]
        n_total += n
        riders_total += r["riders"]
        tests = ", ".join(f"{k} test(s): {v}" for k, v in sorted(r["tests_per_rider"].items()))
        print(f"\n[seed {seed}] {r['riders']} riders, {n} scored ({r['skipped']} skipped: too "
              f"few FTP tests); scored tests per rider: {tests}; last test within 2 W of a "
              f"scored test: {r['last_test_within_2w']}")
        print(f"  FTP-test noise for the margin: {r['noise_pct']:.2f} % of FTP (from "
              f"{r['noise_triples']} training-part test triples); oracle RMSE on the scored "
              f"tests {r['oracle_rmse']:.2f} W (simulator's FTP test noise, all tests: "
              f"{r['test_noise_rmse']:.2f} W)")
        for key, verdicts in r["verdicts"].items():
            totals.setdefault(key, Counter()).update(verdicts)
            pooled_all.setdefault(key, Reference()).rows.update(
                {f"{seed}:{a}": v for a, v in r["refs"][key].rows.items()})
            label = LABELS[key] + (f" (g={args.ctl_gain:g})" if key == "rule" else "")
            extra = f" (trained in {r['train_seconds']:.1f} s)" if key == "model" else ""
            print(f"  {label:<22}: {share(verdicts, n, r['riders'])}; pooled MAE "
                  f"{r['pooled'][key]:.2f} W{extra}")
        cells = " | ".join(f"{r['verdicts'][k]['passed']} ({r['pooled'][k]:.2f} W)"
                           for k in r["verdicts"])
        table.append(f"| {seed} | {n} | {r['noise_pct']:.2f} % | {cells} |")
    print()
    for key, c in totals.items():
        mae = pooled_all[key].pooled(float("nan"))["pooled_mae"]
        print(f"[all seeds] {LABELS[key]}: {share(c, n_total, riders_total)}; pooled MAE "
              f"{mae:.2f} W")
    if "model" in totals:
        ratio = totals["model"]["passed"] / max(totals["oracle"]["passed"], 1)
        print(f"[all seeds] zone nets pass {ratio:.0%} of the oracle's passes")
    print("\n| seed | scored | noise | " + " | ".join(f"{LABELS[k]} passes (pooled MAE)"
                                                  for k in totals) + " |")
    print("|---" * (3 + len(totals)) + "|")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
