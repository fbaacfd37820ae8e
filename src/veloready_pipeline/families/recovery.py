"""The recovery family: tomorrow's recovery score from XGBoost (`models.recovery`).

A population model over every athlete of the run is fitted once, before the chunks;
each chunk then fits personal models on top of it. Gated by `gates.evaluate_gate`
(RMSE/MAE/R² limits and the persistence and mean baselines); the champion loss is the
RMSE on the test days.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from veloready_pipeline.config import GateThresholds, SearchSpace, Settings
from veloready_pipeline.families.base import ModelFamily
from veloready_pipeline.gates import GateVerdict, evaluate_gate, regression_metrics
from veloready_pipeline.results import ModelResult

if TYPE_CHECKING:
    import pandas as pd


class RecoveryFamily(ModelFamily):
    name = "recovery"
    model_kind = "xgboost"
    fits_population = True
    plot_unit = "recovery score (0-100)"
    plot_style = "days"
    reports_baseline_rmse = True
    # 0-100 scores: the design card's defaults.
    default_gates = GateThresholds(rmse_max=8.0, mae_max=6.0, r2_min=0.7)
    default_space = SearchSpace(params={
        "max_depth": [2, 5],
        "learning_rate": [0.03, 0.3],
        "n_estimators": [50, 300],
        "min_child_weight": [1.0, 10.0],
        "subsample": [0.6, 1.0],
        "reg_lambda": [0.1, 10.0],
    })
    # What the trainer reads (`models.recovery._booster_params` and ``n_estimators``).
    space_params = frozenset({"max_depth", "learning_rate", "n_estimators",
                              "min_child_weight", "subsample", "reg_lambda"})

    def dataset(self, athlete_rows: pd.DataFrame, settings: Settings) -> Any:
        from veloready_pipeline.models.recovery import prepare_athlete

        return prepare_athlete(athlete_rows, self.training_config(settings))

    def fit_population(self, frame: pd.DataFrame, athlete_ids: list[str],
                       settings: Settings) -> Any:
        from veloready_pipeline.models.recovery import fit_recovery_population

        return fit_recovery_population(frame, athlete_ids, self.training_config(settings))

    def train_chunk(self, frame: pd.DataFrame, athlete_ids: list[str], settings: Settings,
                    warm_starts: dict[str, dict[str, Any]] | None = None,
                    population: Any = None) -> list[ModelResult]:
        """Personal models on the population's; without ``population`` the chunk fits
        one on its own athletes."""
        from veloready_pipeline.models.recovery import train_recovery_chunk

        return train_recovery_chunk(frame, athlete_ids, self.training_config(settings),
                                    warm_starts, population)

    def verdict(self, result: ModelResult, metrics: dict[str, float],
                settings: Settings) -> GateVerdict:
        return evaluate_gate(self.name, metrics, result.baselines, self.thresholds(settings))

    def score(self, result: ModelResult, model: Any) -> float:
        """RMSE of a booster (or an sklearn wrapper of one) with the same feature set."""
        booster = model.get_booster() if hasattr(model, "get_booster") else model
        if list(booster.feature_names or []) != result.feature_names:
            raise ValueError("champion uses a different feature set")
        pred = booster.inplace_predict(np.asarray(result.test_X, dtype=np.float32))
        return regression_metrics(np.asarray(result.test_y), pred)["rmse"]

    def export(self, result: ModelResult, folder: Path, name: str,
               settings: Settings) -> dict[str, Any]:
        return export_recovery(result, folder, name)


def export_recovery(result: ModelResult, out_dir: Path, name: str) -> dict[str, Any]:
    """Float32 Core ML tree ensemble + ONNX, with parity checked on the test rows."""
    from veloready_pipeline.export.coreml import export_xgboost

    sample = np.asarray(result.test_X, dtype=np.float32)
    # The rider's own baseline constants: the app computes the relative inputs with them.
    meta = ({"veloready.athlete_baseline": json.dumps(result.extra["athlete_baseline"],
                                                      sort_keys=True)}
            if result.extra.get("athlete_baseline") else None)
    arts = export_xgboost(result.model, result.feature_names, out_dir, name, sample,
                          metadata=meta)

    return {
        "family": result.family,
        "shipped": "coreml",
        "quantization": "float32",
        "artifacts": {k: v.to_dict() for k, v in arts.items()},
        "gate_metrics": {k: float(v) for k, v in result.metrics.items()},
    }


RECOVERY = RecoveryFamily()
