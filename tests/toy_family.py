"""A toy fourth model family, for tests only: tomorrow's recovery score from tonight's
sleep, a linear model (a torch ``nn.Linear``) fitted by least squares.

Everything the pipeline asks of a family is in this one module; a test adds it with one
registration line (``FAMILIES.register(TOY)``) and removes it afterwards. Being a
`TorchNetFamily`, its champion loss and its Core ML + ONNX export (float32 and quantized
variants, each re-gated on its own read-back weights) are the torch families' own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from veloready_pipeline.config import GateThresholds, SearchSpace, Settings
from veloready_pipeline.families.nets_common import TorchNetFamily
from veloready_pipeline.gates import GateVerdict, evaluate_gate, regression_metrics
from veloready_pipeline.results import ModelResult
from veloready_pipeline.split import split_chronological

if TYPE_CHECKING:
    import pandas as pd

INPUTS = ["sleep_score", "sleep_hours"]
TARGET = "recovery_score"
MIN_DAYS = 30


class SleepLinearFamily(TorchNetFamily):
    name = "toy_sleep"
    output_name = "recovery_tomorrow"
    loss_key = "rmse"
    plot_unit = "recovery score (0-100)"
    reports_baseline_rmse = True
    default_gates = GateThresholds(rmse_max=30.0, mae_max=25.0)
    default_space = SearchSpace()
    space_params: frozenset[str] = frozenset()

    def dataset(self, athlete_rows: pd.DataFrame, settings: Settings) -> Any:
        """Tonight's sleep -> tomorrow's recovery, days with both known."""
        d = athlete_rows.sort_values("date")
        X = d[INPUTS].to_numpy(dtype=float)[:-1]
        y = d[TARGET].to_numpy(dtype=float)[1:]
        dates = d["date"].astype(str).str[:10].to_numpy()[1:]
        ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
        return X[ok].astype(np.float32), y[ok], dates[ok]

    def train_chunk(self, frame: pd.DataFrame, athlete_ids: list[str], settings: Settings,
                    warm_starts: dict[str, dict[str, Any]] | None = None,
                    population: Any = None) -> list[ModelResult]:
        import torch

        groups = dict(tuple(frame.groupby("athlete_id", sort=False)))
        out: list[ModelResult] = []
        for aid in athlete_ids:
            X, y, dates = self.dataset(groups[aid], settings) if aid in groups else \
                (np.empty((0, len(INPUTS))), np.empty(0), np.empty(0))
            if len(y) < MIN_DAYS:
                out.append(ModelResult(aid, self.name, "skipped",
                                       reason=f"fewer than {MIN_DAYS} labelled days"))
                continue
            tr, va, te = split_chronological(len(y))
            fit = np.concatenate([tr, va])
            coef, *_ = np.linalg.lstsq(np.c_[X[fit], np.ones(len(fit))], y[fit], rcond=None)
            model = torch.nn.Linear(len(INPUTS), 1)
            with torch.no_grad():
                model.weight.copy_(torch.as_tensor(coef[None, :-1], dtype=torch.float32))
                model.bias.fill_(float(coef[-1]))
            model.eval()
            r = ModelResult(aid, self.name, "trained", model=model,
                            model_kind=self.model_kind, feature_names=list(INPUTS),
                            params={"fit": "least squares"},
                            n_rows={"train": len(tr), "val": len(va), "test": len(te)},
                            data_window={"start": str(dates[0]), "end": str(dates[-1]),
                                         "test_start": str(dates[te[0]])},
                            test_X=X[te], test_y=y[te], test_dates=list(dates[te]))
            r.metrics, r.test_pred = self.test_metrics(r, model)
            mean = np.full(len(te), y[fit].mean())
            r.baselines = {"mean_rmse": regression_metrics(y[te], mean)["rmse"]}
            r.verdict = self.verdict(r, r.metrics, settings)
            r.reason = r.verdict.reason()
            out.append(r)
        return out

    def verdict(self, result: ModelResult, metrics: dict[str, float],
                settings: Settings) -> GateVerdict:
        return evaluate_gate(self.name, metrics, result.baselines, self.thresholds(settings))

    def test_metrics(self, result: ModelResult, model: Any) -> tuple[dict[str, float],
                                                                     np.ndarray]:
        import torch

        with torch.no_grad():
            out = model(torch.as_tensor(np.asarray(result.test_X, dtype=np.float32)))
        pred = out.double().numpy()[:, 0]
        return regression_metrics(np.asarray(result.test_y), pred), pred


TOY = SleepLinearFamily()
