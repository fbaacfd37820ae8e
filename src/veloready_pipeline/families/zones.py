"""The zones family: FTP and zone anchors in watts from a personal MLP (`models.zones`).

Gated on the rider's measured FTP tests, non-inferior to "FTP stays at the last test"
within a test's noise, with the batch's pooled MAE better than the last test's
(`gates.zone_verdict`). The champion loss is the FTP RMSE in watts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from veloready_pipeline.config import GateThresholds, SearchSpace, Settings
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
    # Watts on FTP: a zone boundary 8 W off is inside a day-to-day power meter drift.
    default_gates = GateThresholds(rmse_max=8.0, mae_max=6.0)
    # Networks: `hidden` is a list of three choices (two numbers would mean a range);
    # one population network is fitted per choice and shared by every trial. `lr`
    # and `prior_strength` (L2 pull of each athlete's weights towards the population
    # network) tune the personal fine-tune. Small widths: ~50-120 rows per rider.
    # Gentle fine-tunes only (strong prior, small steps): a rider has 1-3 injury
    # events, and the last interpolated FTP labels of training lean on the
    # validation part's test, so validation would reward over-fitting.
    # Zone widths start at 64: a Core ML package has a fixed ~3 KB part (program
    # text, manifest) that quantizing cannot shrink. Measured with the real export
    # (18 inputs, 3 hidden layers), quantized size / float32 size: width 32 linear8
    # 0.64, palette4 0.53 (float32 18.5 KB); 48: 0.50 / 0.38; 64: 0.42 / 0.29;
    # 80: 0.38 / 0.25; 96: 0.35 / 0.21. From 64 up whichever quantized variant
    # ships is at most half the float32 package with a margin (checked at the
    # smallest width by tests/test_models_zones.py).
    default_space = SearchSpace(params={"hidden": [64, 80, 96], "lr": [0.0003, 0.003],
                                        "prior_strength": [0.3, 30.0]})

    def dataset(self, athlete_rows: pd.DataFrame, settings: Settings) -> Any:
        from veloready_pipeline.features_nets import make_zone_dataset

        return make_zone_dataset(athlete_rows)

    def train_batch(self, datasets: Mapping[str, Any],
                    settings: Settings) -> tuple[Mapping[str, Any], dict[str, float]]:
        from veloready_pipeline.models.zones import pooled_zone_metrics, train_zone_models

        trained = train_zone_models(datasets, self.training_config(settings))
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
        pred = predict_zones(model, np.asarray(result.test_X))
        return regression_metrics(y[:, 0], pred[:, 0]), pred


ZONES = ZonesFamily()
