"""Named, explicit quality gates evaluated on the untouched test part.

A verdict lists every check with its value, threshold and margin, so a failure reads
"rmse 9.42 > 8.00 (by 1.42)" rather than just "failed". A model must pass every
threshold configured for its family *and* beat each naive baseline; otherwise it is
never registered, exported or advertised to the app.

Every family's verdict lives here: `evaluate_gate` (thresholds and naive baselines,
the recovery family's verdict), `zone_verdict` and `injury_verdict` (the nets' checks
that use figures pooled over the batch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from veloready_pipeline.config import GateThresholds


@dataclass(frozen=True)
class Check:
    """One gate check."""

    name: str
    value: float
    threshold: float
    op: str  # "<", ">", ">=", "<=", "beats" (lower wins), "beats_higher" (higher wins)
    passed: bool

    @property
    def margin(self) -> float:
        """How far from the threshold, positive when on the passing side."""
        if self.op in ("<", "<=", "beats"):
            return self.threshold - self.value
        return self.value - self.threshold

    def describe(self) -> str:
        """'rmse 9.100 >= 8.000 (misses by 1.100)'; an undefined value reads 'undefined'."""
        count = "events" in self.name  # counts read as counts: "8 < 10"
        v, t = _num(self.value, count), _num(self.threshold, count)
        m = _num(abs(self.margin), count)
        if self.op in ("beats", "beats_higher"):
            word = "beats" if self.passed else "does not beat"
            if not (np.isfinite(self.value) and np.isfinite(self.threshold)):
                return f"{self.name}: model {v}, baseline {t}: not comparable"
            return f"{self.name}: model {v} {word} baseline {t} (by {m})"
        if self.passed:
            return f"{self.name} {v} {self.op} {t}"
        if not np.isfinite(self.value):
            return f"{self.name} {v} (needs {self.op} {t})"
        neg = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}[self.op]
        return f"{self.name} {v} {neg} {t} (misses by {m})"


def _num(x: float, count: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "undefined"
    return f"{x:.0f}" if count and float(x).is_integer() else f"{x:.3f}"


@dataclass
class GateVerdict:
    """Every check of one model, and the overall result."""

    family: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def reason(self) -> str:
        """One line naming what failed and by how much (or that all passed)."""
        if not self.checks:
            return "no checks configured"
        if self.passed:
            return "passed: " + "; ".join(c.describe() for c in self.checks)
        return "failed: " + "; ".join(c.describe() for c in self.failures)

    def as_dict(self) -> dict[str, object]:
        return {
            "family": self.family,
            "passed": self.passed,
            "reason": self.reason(),
            "checks": [asdict(c) | {"margin": c.margin} for c in self.checks],
        }


def _finite(x: float | None) -> bool:
    return x is not None and bool(np.isfinite(x))


def evaluate_gate(
    family: str,
    metrics: dict[str, float],
    baselines: dict[str, float],
    thresholds: GateThresholds,
) -> GateVerdict:
    """Apply a family's thresholds and baseline comparisons.

    Args:
        metrics: the model's test metrics (``rmse``, ``mae``, ``r2``, ``auroc``, ``brier``).
        baselines: metric of each naive baseline on the same test rows, keyed
            ``"<baseline>_<metric>"`` (e.g. ``persistence_rmse``, ``mean_rmse``,
            ``base_rate_brier``, ``warning_score_auroc``). Error metrics must be beaten by
            being lower, ``auroc`` by being higher.
    """
    verdict = GateVerdict(family)
    add = verdict.checks.append

    def bounded(name: str, limit: float | None, op: str) -> None:
        if limit is None:
            return
        value = metrics.get(name)
        if not _finite(value):
            add(Check(name, float("nan"), limit, op, False))
            return
        v = float(value)  # type: ignore[arg-type]
        ok = v < limit if op == "<" else v > limit if op == ">" else v >= limit
        add(Check(name, v, limit, op, ok))

    bounded("rmse", thresholds.rmse_max, "<")
    bounded("mae", thresholds.mae_max, "<")
    bounded("r2", thresholds.r2_min, ">")
    bounded("auroc", thresholds.auroc_min, ">=")
    if thresholds.must_beat_baselines:
        for key, base in sorted(baselines.items()):
            metric = key.rsplit("_", 1)[-1]
            value = metrics.get(metric)
            if not _finite(base) or not _finite(value):
                add(Check(f"beats {key}", float("nan"), float("nan"), "beats", False))
                continue
            v, b = float(value), float(base)  # type: ignore[arg-type]
            if metric == "auroc":
                add(Check(f"beats {key}", v, b, "beats_higher", v > b))  # higher wins
            else:
                add(Check(f"beats {key}", v, b, "beats", v < b))
    return verdict


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² (R² against the test part's own mean)."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    err = y_pred - y_true
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
    }


def zone_verdict(metrics: dict[str, float], baselines: dict[str, float],
                 pooled: dict[str, float], thresholds: GateThresholds) -> GateVerdict:
    """One rider's zone model: every check below must pass (NaN never passes).

    FTP error in watts, non-inferior to "FTP stays at the last test" within a test's
    noise, and the batch's pooled MAE better than the last test's (``pooled`` from
    `models.zones.pooled_zone_metrics`).

    1. Absolute accuracy on the rider's scored (measured) FTP tests: ``rmse`` and
       ``mae`` below the configured limits (watts).
    2. Non-inferiority to "FTP stays at the last test" (``must_beat_baselines``): the
       model's RMSE and MAE on the same tests may exceed the baseline's by at most one
       FTP-test measurement noise, in watts = ``pooled["ftp_test_noise_pct"]`` % of
       the rider's last-test FTP (``baselines["last_test_ftp_w"]``). One or two tests
       cannot show that a model beats the last test (both sit within a test's noise of
       the truth); they can show it is not worse than the test can tell.
    3. Superiority where the evidence is (``must_beat_baselines``): the model's MAE
       pooled over every scored test of the batch beats the last-test baseline's
       pooled MAE on the same tests (``pooled_mae`` < ``pooled_last_test_mae``).
       Failing it fails every rider of the batch: no zone model of that batch ships.
    """
    verdict = evaluate_gate("zones", metrics, {}, thresholds)
    if not thresholds.must_beat_baselines:
        return verdict
    add = verdict.checks.append
    pct = float(pooled.get("ftp_test_noise_pct", np.nan))
    level = float(baselines.get("last_test_ftp_w", np.nan))
    noise_w = pct / 100.0 * level if _finite(pct) and _finite(level) else float("nan")
    for metric in ("rmse", "mae"):
        value = float(metrics.get(metric, np.nan))
        base = float(baselines.get(f"last_test_{metric}", np.nan))
        limit = base + noise_w
        noise = (f"test noise {noise_w:.3f} W" if _finite(noise_w) else
                 "test noise unknown (too few training-part FTP tests to estimate it; "
                 "set gates.zones.ftp_test_noise_pct)")
        name = f"{metric} vs last_test_{metric} {base:.3f} + {noise} (non-inferiority)"
        ok = _finite(value) and _finite(limit) and value <= limit
        add(Check(name, value, limit, "<=", ok))
    pm = float(pooled.get("pooled_mae", np.nan))
    pb = float(pooled.get("pooled_last_test_mae", np.nan))
    add(Check("beats pooled last_test_mae (batch)", pm, pb, "beats",
              _finite(pm) and _finite(pb) and pm < pb))
    return verdict


def injury_verdict(metrics: dict[str, float], baselines: dict[str, float],
                   pooled: dict[str, float], thresholds: GateThresholds) -> GateVerdict:
    """One athlete's injury model: every check below must pass (NaN never passes).

    1. Calibration, own test rows (always defined): Brier score below the Brier of the
       athlete's training-part base rate. A model that cannot beat "the usual risk,
       every day" on its own rider is not shipped.
    2. Ranking evidence (``min_events``): the batch's pooled test parts hold at least
       that many distinct events; fewer and no AUROC is evidence, the check fails.
    3. Ranking, pooled (``auroc_min``): the AUROC of the risk over all the batch's test
       parts together. It is the only statistically meaningful ranking figure (the
       app's fixed 50/70 thresholds also assume a risk means the same for every rider).
    4. Ranking vs the rule (``must_beat_baselines``): the pooled AUROC beats the
       warning-sign score's pooled AUROC on the same rows, and, when the athlete's own
       test part holds an event (own AUROC defined), the athlete's own AUROC beats the
       warning-sign score's own AUROC (or is a perfect 1.0, which nothing can beat).
       An athlete with no test event has no own ranking check: an AUROC needs an
       event; their verdict rests on checks 1-3 (calibration on their own days, the
       family's ranking on the batch they belong to).

    ``metrics``: own ``brier``, ``auroc``; ``baselines``: own ``base_rate_brier``,
    ``warning_score_auroc``; ``pooled``: ``pooled_auroc``, ``pooled_warning_score_auroc``,
    ``pooled_n_onsets`` (see `models.injury.pooled_injury_metrics`).

    Why: a personal test part (15 % of ~5 months) holds zero to two injury events, so
    a per-athlete AUROC is mostly undefined (no event) or a coin of one event; these
    checks are what a per-athlete verdict can honestly say.
    """
    verdict = GateVerdict("injury")
    add = verdict.checks.append

    def finite(*xs: float) -> bool:
        return all(x is not None and bool(np.isfinite(x)) for x in xs)

    brier, base = metrics.get("brier", np.nan), baselines.get("base_rate_brier", np.nan)
    add(Check("beats base_rate_brier", float(brier), float(base), "beats",
              finite(brier, base) and brier < base))
    auc = float(pooled.get("pooled_auroc", np.nan))
    if thresholds.min_events is not None:
        n = float(pooled.get("pooled_n_onsets", np.nan))
        add(Check("pooled test events", n, float(thresholds.min_events), ">=",
                  finite(n) and n >= thresholds.min_events))
    if thresholds.auroc_min is not None:
        add(Check("pooled auroc", auc, thresholds.auroc_min, ">=",
                  finite(auc) and auc >= thresholds.auroc_min))
    if thresholds.must_beat_baselines:
        ws = float(pooled.get("pooled_warning_score_auroc", np.nan))
        add(Check("beats pooled warning_score_auroc", auc, ws, "beats_higher",
                  finite(auc, ws) and auc > ws))
        own = float(metrics.get("auroc", np.nan))
        own_ws = float(baselines.get("warning_score_auroc", np.nan))
        if finite(own) or finite(own_ws):  # the athlete's test part holds an event
            add(Check("beats own warning_score_auroc", own, own_ws, "beats_higher",
                      finite(own, own_ws) and (own > own_ws or own == 1.0)))
    return verdict


def paired_bootstrap_gain(baseline_err: np.ndarray, model_err: np.ndarray,
                          n_resamples: int, seed: int,
                          level: float = 0.95) -> dict[str, float]:
    """Mean of (baseline error - model error) per row, with a paired bootstrap interval.

    Both error arrays are per test row (e.g. absolute errors); each resample draws the
    same rows for both, so what is measured is the model's gain over the baseline on
    this athlete's test part. A positive ``low`` says the model helps this athlete at
    that confidence; an interval spanning 0 says the test part cannot tell.

    Args:
        baseline_err / model_err: per-row errors on the same rows (same length).
        n_resamples: bootstrap resamples (e.g. 1000).
        seed: the resampling seed (derived from the run's seed).
        level: two-sided coverage of the percentile interval.

    Returns:
        ``{"gain": mean difference, "low": ..., "high": ...}`` (NaN without rows).
    """
    b = np.asarray(baseline_err, dtype=float)
    m = np.asarray(model_err, dtype=float)
    if b.shape != m.shape:
        raise ValueError(f"paired errors need the same rows, got {b.shape} and {m.shape}")
    diff = b - m
    n = len(diff)
    if n == 0:
        return {"gain": float("nan"), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(int(n_resamples), n))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return {"gain": float(diff.mean()), "low": float(low), "high": float(high)}
