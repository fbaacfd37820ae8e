"""Injury family: a personal LSTM from the last 14 days to a 0-100 risk.

Input: 14 days x `features_nets.FEATURE_NAMES_INJURY`: load, form, ramp, HRV/RHR
change from the athlete's own baseline, sleep, recovery, and the warning signs the app
already shows (each of the six signs as 0/1 and as its share of the last 7 days, the
week-over-week HRV/RHR change, TSB and poor-sleep streaks, sleep debt against the
athlete's own baseline) plus prior injury (days since the last onset, an onset in the
last 14 / 15-45 days, onsets in the last 180 days), and ACWR, TSB and the rule score
averaged over 7 days. Athlete-relative inputs let one population network serve every
rider. Measured by `bench/injury_auroc.py` (50 realistic riders x 180 days, seeds
7,1,2,3,4): pooled test AUROC 0.799/0.774/0.795/0.775/0.808, mean 0.790 (eleven raw
inputs: 0.758 on seed 7; warning-sign score mean 0.693; the simulator's own forecast
from its hidden state on the same rows 0.846). Output: the probability that an
injury/overtraining event starts in the next `features_nets.INJURY_HORIZON` days, as a
0-100 risk (sigmoid x 100), shown in the app as `risk_category` low (< 50) / medium
(50-70) / high (> 70).

Trained with binary cross-entropy (a proper scoring rule, so the risk stays a
calibrated probability and the Brier score is meaningful): a population LSTM on the
chunk's riders, fine-tuned per rider with an L2 pull towards it, every athlete of a
chunk at once (`veloready_pipeline.models.net_tuning`). Whether an athlete ships the
population weights or its fine-tune is chosen on its validation part only and recorded
as the ``adaptation`` parameter (MLflow params, summary). With one to three events per
rider, the population prior is what makes a personal model learnable at all. The
exported module takes raw features (normalisation statistics are buffers inside it).

Metrics on the untouched test part: AUROC (ranking of real events) and Brier score
(calibration), next to the warning-sign score's AUROC and the base-rate Brier on the
same rows. A single athlete's test part holds few events (often none, and then
AUROC is undefined), so `pooled_injury_metrics` also scores all athletes' test parts
together - the honest measure of the family.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from veloready_pipeline.config import Family, TrainingConfig
from veloready_pipeline.features_nets import FEATURE_NAMES_INJURY, NetDataset
from veloready_pipeline.models.net_layers import BatchedLSTM, PlainLSTM
from veloready_pipeline.models.net_tuning import FamilyResult, NetFamily, train_net_family

FAMILY: Family = "injury"
LOW_MAX = 50.0
MEDIUM_MAX = 70.0


class InjuryLSTM(PlainLSTM):
    """Raw ``[N, 14, n_features]`` sequences -> risk 0-100 ``[N]``.

    One LSTM layer and a linear head on the last hidden state, plus a linear term on
    the last day's normalised inputs. ``forward_normalized``
    returns the logit (training); ``forward`` normalises with the athlete's stored
    statistics and returns ``sigmoid(logit) * 100`` (exported).
    """

    def __init__(self, n_in: int = len(FEATURE_NAMES_INJURY), hidden: int = 16) -> None:
        super().__init__()
        self.init_kwargs = {"n_in": n_in, "hidden": hidden}
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        # A logistic term on the last day's inputs beside the LSTM ("wide and deep"):
        # the warning-sign inputs of today are most of the signal, and a linear
        # read-out of them learns from the few events of a batch far more reliably
        # than the recurrent path alone; the LSTM adds what the 14-day course holds.
        self.skip = nn.Linear(n_in, 1, bias=False)
        self.register_buffer("x_mean", torch.zeros(n_in))
        self.register_buffer("x_std", torch.ones(n_in))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def normalize_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_mean) / self.x_std

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(xn)
        return (self.head(out[:, -1, :]) + self.skip(xn[:, -1, :])).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_normalized(self.normalize_x(x))) * 100.0


def make_injury_lstm(params: Mapping[str, Any], n_in: int, n_out: int) -> InjuryLSTM:
    """A fresh InjuryLSTM for one trial's parameters (``n_out`` is always 1)."""
    del n_out
    return InjuryLSTM(n_in=n_in, hidden=int(params.get("hidden", 16)))


INJURY_FAMILY = NetFamily(FAMILY, make_injury_lstm, BatchedLSTM, "bce", 1)


def risk_category(risk: float) -> str:
    """The app's banner level: low (< 50), medium (50-70), high (> 70).

    Raises:
        ValueError: if ``risk`` is not a number in 0-100.
    """
    r = float(risk)
    if not 0.0 <= r <= 100.0:  # also rejects NaN
        raise ValueError(f"risk must be a number in 0-100, got {risk!r}")
    if r < LOW_MAX:
        return "low"
    if r <= MEDIUM_MAX:
        return "medium"
    return "high"


def predict_risk(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """Risk 0-100 for raw sequences ``[n, 14, n_features]``."""
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(X, dtype=np.float32)))
    return out.double().numpy().reshape(-1)


def safe_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC, or NaN when only one class is present (undefined, not 0.5)."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def count_onsets(y: np.ndarray) -> int:
    """Distinct events behind a run of labels in time order.

    Each event makes the `features_nets.INJURY_HORIZON` rows before it positive, so a
    run of consecutive positive rows is one event (events are >= 21 days apart).
    """
    y = np.asarray(y, dtype=float) > 0.5
    return int(y[:1].sum() + np.sum(y[1:] & ~y[:-1]))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of probabilities (0-1) against 0/1 outcomes."""
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def evaluate_injury_model(ds: NetDataset, model: nn.Module) -> tuple[dict[str, float],
                                                                     dict[str, float],
                                                                     np.ndarray]:
    """Test AUROC/Brier, the warning-sign AUROC and the base-rate Brier on the same rows.

    The base rate is the training part's event rate (what a model that knows nothing
    about the athlete's state would predict every day).
    """
    te, tr = ds.test_idx, ds.train_idx
    risk = predict_risk(model, ds.X[te])
    y = ds.y[te].astype(float)
    rate = float(ds.y[tr].mean()) if len(tr) else 0.0
    metrics = {
        "auroc": safe_auroc(y, risk),
        "brier": brier(y, risk / 100.0),
        "n_test_events": float(y.sum()),
        "n_test_onsets": float(count_onsets(y)),
        "test_event_rate": float(y.mean()) if len(y) else float("nan"),
    }
    baselines = {
        "warning_score_auroc": safe_auroc(y, ds.baseline[te]),
        "base_rate_brier": brier(y, np.full(len(y), rate)),
    }
    return metrics, baselines, risk


def pooled_injury_metrics(results: Iterable[FamilyResult]) -> dict[str, float]:
    """AUROC and Brier over all trained athletes' test parts together.

    Per-athlete test parts hold too few events for a stable AUROC; pooling ranks every
    athlete's test days against every other's, which is also what the app's fixed
    thresholds (50 / 70) assume: a risk means the same thing for every rider.
    An *event* is an injury onset, everywhere in the pipeline: ``pooled_n_onsets``
    counts the distinct events (what the AUROC's uncertainty depends on and what the
    gate's ``min_events`` counts); ``pooled_positive_label_days`` counts the positive
    label rows behind them (each onset labels up to 7 days before it).
    """
    ys, risks, scores, rates, onsets = [], [], [], [], 0
    for r in results:
        if r.status != "trained" or r.test_y is None or r.test_pred is None:
            continue
        ys.append(np.asarray(r.test_y, float))
        onsets += count_onsets(ys[-1])
        risks.append(np.asarray(r.test_pred, float))
        scores.append(np.asarray(r.test_baseline, float))
        rates.append(np.full(len(r.test_y), r.extra.get("train_event_rate", np.nan)))
    if not ys:
        return {}
    y, risk, score = np.concatenate(ys), np.concatenate(risks), np.concatenate(scores)
    rate = np.concatenate(rates)
    return {
        "pooled_auroc": safe_auroc(y, risk),
        "pooled_brier": brier(y, risk / 100.0),
        "pooled_warning_score_auroc": safe_auroc(y, score),
        "pooled_base_rate_brier": brier(y, rate) if np.isfinite(rate).all() else float("nan"),
        "pooled_n_rows": float(len(y)),
        "pooled_positive_label_days": float(y.sum()),
        "pooled_n_onsets": float(onsets),
    }


def train_injury_models(
    datasets: Mapping[str, NetDataset],
    config: TrainingConfig,
    warm_starts: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, FamilyResult]:
    """Tune, train and evaluate every athlete's injury LSTM, in batches of athletes.

    Args:
        datasets: athlete id -> split dataset from `features_nets.make_injury_dataset`.
        config: the family's training section (seed, tuning, space, epochs, execution
            threads), from `families.base.ModelFamily.training_config`.
        warm_starts: athlete id -> last week's best params (enqueued as first trials).
    """
    results = train_net_family(INJURY_FAMILY, datasets, config, warm_starts,
                               evaluate_injury_model)
    for aid, res in results.items():
        ds = datasets[aid]
        if res.status == "trained":
            # Pooled, then personal: every athlete starts from the batch's population
            # LSTM and keeps it unless its own fine-tune scored better on its
            # validation part (best epoch 0 = the population weights won).
            adaptation = "population" if int(res.params.get("best_epoch", 0)) == 0 \
                else "fine-tune"
            res.params["adaptation"] = adaptation
            res.extra["adaptation"] = adaptation
            res.extra["train_event_rate"] = float(ds.y[ds.train_idx].mean())
            pred = res.test_pred
            assert pred is not None  # train_net_family scores every trained model
            res.metrics["risk_category_share_high"] = float(
                np.mean([risk_category(r) == "high" for r in pred])
            )
    return results
