"""The injury family: a 0-100 risk of an injury/overtraining onset from a personal LSTM
(`models.injury`).

Injury gate rationale: a personal test part (15 % of ~5 months) holds zero to two
injury events, so a per-athlete AUROC is mostly undefined (no event) or a coin of one
event. What a per-athlete verdict can honestly say: the athlete's own risk is better
calibrated than their base rate, the family ranks real events well on the batch's
pooled test parts (enough events, AUROC >= 0.75, better than the warning-sign score on
the same rows), and where the athlete's own test part does hold an event, their own
ranking is better than the warning-sign score's too (`gates.injury_verdict`). The
champion loss is the Brier score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from veloready_pipeline.config import GateThresholds, SearchSpace, Settings
from veloready_pipeline.families.nets_common import BatchedNetFamily
from veloready_pipeline.gates import GateVerdict, injury_verdict
from veloready_pipeline.results import ModelResult

if TYPE_CHECKING:
    import pandas as pd

INJURY_OUTPUT = "risk"


def rank_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney), NaN when only one class is present."""
    y = np.asarray(y, dtype=float)
    s = np.asarray(score, dtype=float)
    pos, neg = s[y > 0.5], s[y <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks for ties
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


class InjuryFamily(BatchedNetFamily):
    name = "injury"
    output_name = INJURY_OUTPUT
    loss_key = "brier"
    plot_unit = "risk (%)"
    plot_style = "risk"
    plot_series_title = "label by predicted risk"
    # Ranking real injury events; Brier must beat the base rate (baseline). See
    # `gates.injury_verdict`: the AUROC is pooled over the batch's test parts
    # (a rider's own test part holds 0-2 events) and needs >= 10 distinct events.
    default_gates = GateThresholds(auroc_min=0.75, min_events=10)
    # Prior strength from 10 up. A rider's training part holds one to three events and
    # validation rarely one, so a loose personal fine-tune fits noise and validation
    # cannot tell (50 realistic riders, 20 trials, seeds 7/1/2: pooled test AUROC
    # 0.762/0.731/0.676 with [0.3, 30], 0.762/0.731/0.726 with [10, 300]).
    default_space = SearchSpace(params={"hidden": [32], "lr": [0.0003, 0.003],
                                        "prior_strength": [10.0, 300.0]})

    def dataset(self, athlete_rows: pd.DataFrame, settings: Settings) -> Any:
        from veloready_pipeline.features_nets import make_injury_dataset

        return make_injury_dataset(athlete_rows)

    def train_batch(self, datasets: Mapping[str, Any],
                    settings: Settings) -> tuple[Mapping[str, Any], dict[str, float]]:
        from veloready_pipeline.models.injury import pooled_injury_metrics, train_injury_models

        trained = train_injury_models(datasets, self.training_config(settings))
        return trained, pooled_injury_metrics(trained.values())

    def gate_in_batch(self, result: ModelResult, pooled: dict[str, float],
                      thresholds: GateThresholds) -> GateVerdict:
        verdict = injury_verdict(result.metrics, result.baselines, pooled, thresholds)
        result.metrics |= {k: v for k, v in pooled.items()
                           if k in ("pooled_auroc", "pooled_n_onsets")}
        result.baselines |= {k: v for k, v in pooled.items()
                             if k == "pooled_warning_score_auroc"}
        return verdict

    def verdict(self, result: ModelResult, metrics: dict[str, float],
                settings: Settings) -> GateVerdict:
        pooled = {"pooled_auroc": result.metrics.get("pooled_auroc", np.nan),
                  "pooled_n_onsets": result.metrics.get("pooled_n_onsets", np.nan),
                  "pooled_warning_score_auroc": result.baselines.get(
                      "pooled_warning_score_auroc", np.nan)}
        return injury_verdict(metrics, result.baselines, pooled, self.thresholds(settings))

    def test_metrics(self, result: ModelResult, model: Any) -> tuple[dict[str, float],
                                                                     np.ndarray]:
        """Brier score and AUROC of the risk on the test days."""
        from veloready_pipeline.models.injury import brier, predict_risk, safe_auroc

        y = np.asarray(result.test_y)
        risk = predict_risk(model, np.asarray(result.test_X))
        return {"brier": brier(y, risk / 100.0), "auroc": safe_auroc(y, risk)}, risk

    def pooled_figures(self, tests: Sequence[dict[str, Any]]) -> dict[str, float]:
        """AUROC and Brier of the risk over every model's test days together, next to
        the base rate's Brier and the warning-sign score's AUROC on the same days."""
        if not tests:
            return {}
        out: dict[str, float] = {}
        y = np.concatenate([t["y_true"] for t in tests])
        p = np.concatenate([t["y_pred"] for t in tests])
        out["pooled_auroc"] = rank_auroc(y, p)
        prob = p / 100.0 if np.nanmax(p) > 1.0 else p
        out["pooled_brier"] = float(np.mean((prob - y) ** 2))
        out["pooled_base_rate_brier"] = float(np.mean((y.mean() - y) ** 2))
        # An event is an onset (what the gate's min_events counts); the label days
        # behind them are reported under their own name.
        from veloready_pipeline.models.injury import count_onsets

        out["pooled_onsets"] = float(sum(count_onsets(np.asarray(t["y_true"], float))
                                         for t in tests))
        out["pooled_positive_label_days"] = float(y.sum())
        ws = [t.get("baseline_score") for t in tests]
        if all(w is not None for w in ws):
            out["pooled_warning_score_auroc"] = rank_auroc(
                y, np.concatenate([np.asarray(w) for w in ws]))
        return out


INJURY = InjuryFamily()
