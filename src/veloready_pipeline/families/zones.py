"""The zones family: FTP and zone anchors in watts from a personal MLP (`models.zones`).

Gated on the rider's measured FTP tests, non-inferior to "FTP stays at the last test"
within a test's noise, with the batch's pooled MAE better than the last test's
(`gates.zone_verdict`). The champion loss is the FTP RMSE in watts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from veloready_pipeline.config import GateThresholds, Settings
from veloready_pipeline.families.nets_common import BatchedNetFamily
from veloready_pipeline.gates import GateVerdict, regression_metrics, zone_verdict
from veloready_pipeline.results import ModelResult

if TYPE_CHECKING:
    import pandas as pd

ZONE_OUTPUT = "zones_w"
# The batch's figures the verdict needs, stored on each result (``pooled_last_test_mae``
# under baselines, the others under metrics) so a variant can be re-gated on export.
ZONE_POOLED_KEYS = ("pooled_mae", "pooled_last_test_mae", "pooled_n_tests",
                    "ftp_test_noise_pct", "ftp_test_noise_triples")


class ZonesFamily(BatchedNetFamily):
    name = "zones"
    output_name = ZONE_OUTPUT
    loss_key = "rmse"
    plot_unit = "FTP (W)"
    plot_style = "tests"
    plot_series_title = "FTP at each measured test"
    reports_baseline_rmse = True

    def dataset(self, athlete_rows: pd.DataFrame, settings: Settings) -> Any:
        from veloready_pipeline.features_nets import make_zone_dataset

        return make_zone_dataset(athlete_rows)

    def train_batch(self, datasets: Mapping[str, Any],
                    settings: Settings) -> tuple[Mapping[str, Any], dict[str, float]]:
        from veloready_pipeline.models.zones import pooled_zone_metrics, train_zone_models

        trained = train_zone_models(datasets, settings)
        pooled = pooled_zone_metrics(trained.values(), datasets.values(),
                                     self.thresholds(settings).ftp_test_noise_pct)
        return trained, pooled

    def gate_in_batch(self, result: ModelResult, pooled: dict[str, float],
                      thresholds: GateThresholds) -> GateVerdict:
        verdict = zone_verdict(result.metrics, result.baselines, pooled, thresholds)
        result.metrics |= {k: pooled[k] for k in ZONE_POOLED_KEYS
                           if k in pooled and k != "pooled_last_test_mae"}
        result.baselines |= {"pooled_last_test_mae": pooled["pooled_last_test_mae"]}
        return verdict

    def verdict(self, result: ModelResult, metrics: dict[str, float],
                settings: Settings) -> GateVerdict:
        pooled = {k: result.metrics.get(k, np.nan) for k in ZONE_POOLED_KEYS}
        pooled["pooled_last_test_mae"] = result.baselines.get("pooled_last_test_mae", np.nan)
        return zone_verdict(metrics, {k: v for k, v in result.baselines.items()
                                      if k.startswith("last_test")}, pooled,
                            self.thresholds(settings))

    def test_metrics(self, result: ModelResult, model: Any) -> tuple[dict[str, float],
                                                                     np.ndarray]:
        """FTP error in watts (the first output) on the test part's measured tests."""
        from veloready_pipeline.models.zones import predict_zones

        y = np.asarray(result.test_y)
        pred = predict_zones(model, result.test_X)
        return regression_metrics(y[:, 0], pred[:, 0]), pred


ZONES = ZonesFamily()
