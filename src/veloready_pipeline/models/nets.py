"""The two PyTorch families (zones MLP, injury LSTM) as the weekly flow sees them.

Adapts the batched trainers (`models.zones`, `models.injury`, many athletes' networks
trained together) to the flow's `ModelResult`, applies the family gates, scores a
champion on new test rows, and exports a passing network as float32 + quantized Core
ML variants, shipping the smallest variant whose *quantized weights* still pass.

Injury gate rationale: a personal test part (15 % of ~5 months) holds zero to two
injury events, so a per-athlete AUROC is mostly undefined (no event) or a coin of one
event. What a per-athlete verdict can honestly say:
the athlete's own risk is better calibrated than their base rate, the family ranks real
events well on the batch's pooled test parts (enough events, AUROC >= 0.75, better than
the warning-sign score on the same rows), and where the athlete's own test part does
hold an event, their own ranking is better than the warning-sign score's too
(`gates.injury_verdict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veloready_pipeline.config import Settings
from veloready_pipeline.gates import (
    GateVerdict,
    injury_verdict,
    regression_metrics,
    zone_verdict,
)
from veloready_pipeline.results import ModelResult

ZONE_OUTPUT = "zones_w"
INJURY_OUTPUT = "risk"


def _datasets(family: str, frame: pd.DataFrame, athlete_ids: Sequence[str]) -> dict[str, Any]:
    from veloready_pipeline.features_nets import make_injury_dataset, make_zone_dataset

    make = make_zone_dataset if family == "zones" else make_injury_dataset
    groups = dict(tuple(frame.groupby("athlete_id", sort=False)))
    return {aid: make(groups[aid]) for aid in athlete_ids if aid in groups}


def _to_result(fr: Any) -> ModelResult:
    return ModelResult(
        athlete_id=fr.athlete_id,
        family=fr.family,
        status=fr.status,
        reason=fr.reason,
        model=fr.model,
        model_kind="torch",
        feature_names=list(fr.feature_names),
        params=dict(fr.params),
        metrics={k: float(v) for k, v in fr.metrics.items()},
        baselines={k: float(v) for k, v in fr.baselines.items()},
        n_rows={"train": fr.n_train, "val": fr.n_val, "test": fr.n_test},
        data_window=dict(fr.data_window),
        test_X=fr.test_X,
        test_y=fr.test_y,
        test_dates=list(fr.test_dates),
        test_pred=fr.test_pred,
        notes=list(fr.notes),
        extra=dict(fr.extra) | ({"baseline_score": fr.test_baseline}
                                if fr.test_baseline is not None else {}),
    )


ZONE_POOLED_KEYS = ("pooled_mae", "pooled_last_test_mae", "pooled_n_tests",
                    "ftp_test_noise_pct", "ftp_test_noise_triples")


def train_net_chunk(family: str, frame: pd.DataFrame, athlete_ids: list[str],
                    settings: Settings) -> list[ModelResult]:
    """Train a chunk of athletes' networks together and gate each one."""
    datasets = _datasets(family, frame, athlete_ids)
    missing = [aid for aid in athlete_ids if aid not in datasets]
    if family == "zones":
        from veloready_pipeline.models.zones import pooled_zone_metrics, train_zone_models

        trained = train_zone_models(datasets, settings)
        pooled = pooled_zone_metrics(trained.values(), datasets.values(),
                                     settings.gates["zones"].ftp_test_noise_pct)
    else:
        from veloready_pipeline.models.injury import pooled_injury_metrics, train_injury_models

        trained = train_injury_models(datasets, settings)
        pooled = pooled_injury_metrics(trained.values())
    results: list[ModelResult] = []
    thresholds = settings.gates[family]
    for aid in athlete_ids:
        if aid in missing:
            results.append(ModelResult(aid, family, "skipped", reason="no rows after as-of cut"))
            continue
        r = _to_result(trained[aid])
        if r.status == "trained":
            if family == "zones":
                r.verdict = zone_verdict(r.metrics, r.baselines, pooled, thresholds)
                r.metrics |= {k: pooled[k] for k in ZONE_POOLED_KEYS
                              if k in pooled and k != "pooled_last_test_mae"}
                r.baselines |= {"pooled_last_test_mae": pooled["pooled_last_test_mae"]}
            else:
                r.verdict = injury_verdict(r.metrics, r.baselines, pooled, thresholds)
                r.metrics |= {k: v for k, v in pooled.items()
                              if k in ("pooled_auroc", "pooled_n_onsets")}
                r.baselines |= {k: v for k, v in pooled.items()
                                if k == "pooled_warning_score_auroc"}
            r.reason = r.verdict.reason()
        results.append(r)
    return results


def net_metrics(result: ModelResult, model: Any) -> tuple[dict[str, float], np.ndarray]:
    """Metrics of ``model`` on ``result``'s test rows (zones: FTP watts; injury: Brier)."""
    X, y = result.test_X, np.asarray(result.test_y)
    if result.family == "zones":
        from veloready_pipeline.models.zones import predict_zones

        pred = predict_zones(model, X)
        return regression_metrics(y[:, 0], pred[:, 0]), pred
    from veloready_pipeline.models.injury import brier, predict_risk, safe_auroc

    risk = predict_risk(model, X)
    return {"brier": brier(y, risk / 100.0), "auroc": safe_auroc(y, risk)}, risk


def score_net(result: ModelResult, model: Any) -> float:
    """Loss used for champion comparison: FTP RMSE (zones) or Brier score (injury)."""
    metrics, _ = net_metrics(result, model)
    return metrics["rmse"] if result.family == "zones" else metrics["brier"]


def _verdict_for(result: ModelResult, metrics: dict[str, float],
                 settings: Settings) -> GateVerdict:
    thresholds = settings.gates[result.family]
    if result.family == "zones":
        pooled_z = {k: result.metrics.get(k, np.nan) for k in ZONE_POOLED_KEYS}
        pooled_z["pooled_last_test_mae"] = result.baselines.get("pooled_last_test_mae", np.nan)
        return zone_verdict(metrics, {k: v for k, v in result.baselines.items()
                                      if k.startswith("last_test")}, pooled_z, thresholds)
    pooled = {"pooled_auroc": result.metrics.get("pooled_auroc", np.nan),
              "pooled_n_onsets": result.metrics.get("pooled_n_onsets", np.nan),
              "pooled_warning_score_auroc": result.baselines.get("pooled_warning_score_auroc",
                                                                 np.nan)}
    return injury_verdict(metrics, result.baselines, pooled, thresholds)


def choose_shipped_variant(report: dict[str, dict[str, Any]], max_size_ratio: float) -> str:
    """The variant the app downloads: the smallest quantized one that passes its gate.

    ``report`` maps each exported variant to its ``passed`` gate verdict (computed from
    the weights read back from its own package), ``size_bytes``, ``size_ratio`` (of the
    float32 package) and ``verdict``. With quantized variants exported only those may
    ship, and only at most ``max_size_ratio`` of the float32 bytes: float32 is the
    reference for the size ratio and the metric change, never a silent fallback. With
    float32 alone (no quantization configured) float32 ships if it passes.

    Raises:
        RuntimeError: no variant qualifies; the message gives each one's verdict and
            size ratio (the model is then not published).
    """
    quantized = [v for v in report if v != "float32"]
    shippable = ([v for v in quantized if report[v]["size_ratio"] <= max_size_ratio]
                 if quantized else list(report))
    passing = [v for v in shippable if report[v]["passed"]]
    if not passing:
        raise RuntimeError(
            f"no shippable variant (quantized, at most {max_size_ratio:.0%} of float32) "
            "passes the gate: " + "; ".join(
                f"{v}: {r['verdict']}, size ratio {r['size_ratio']:.3f}"
                for v, r in report.items()))
    return min(passing, key=lambda v: report[v]["size_bytes"])


def export_net(result: ModelResult, folder: Path, name: str, settings: Settings) -> dict[str, Any]:
    """Export float32 + quantized variants; ship the smallest that still passes its gate.

    Each quantized variant's gate is evaluated with the weights read back from its own
    Core ML package (dequantized and run in PyTorch), on the same test rows.
    """
    import torch

    from veloready_pipeline.export.coreml import export_torch

    X = np.asarray(result.test_X, dtype=np.float32)
    example = torch.as_tensor(X[:1])
    out_name = ZONE_OUTPUT if result.family == "zones" else INJURY_OUTPUT
    variants = ("float32", *settings.export.quantizations)
    # Each variant's module as read back from its saved package (export_torch reads
    # every package back after saving it): the gates below run on exactly those weights.
    from_package: dict[str, Any] = {}
    arts = export_torch(result.model, example, folder, name, "features", [out_name],
                        variants=variants, sample=torch.as_tensor(X), read_back=from_package)
    base_metrics, _ = net_metrics(result, result.model)
    float_size = arts["float32"].size_bytes
    report: dict[str, dict[str, Any]] = {}
    for variant in variants:
        model = result.model if variant == "float32" else from_package[variant]
        metrics, _ = net_metrics(result, model)
        verdict = _verdict_for(result, metrics, settings)
        key = "rmse" if result.family == "zones" else "brier"
        report[variant] = {
            "size_bytes": arts[variant].size_bytes,
            "size_ratio": arts[variant].size_bytes / float_size,
            "metrics": metrics,
            "metric_change": metrics[key] - base_metrics[key],
            "passed": verdict.passed,
            "verdict": verdict.reason(),
        }
    shipped = choose_shipped_variant(report, settings.export.max_size_ratio)
    artifacts = {v: arts[v] for v in variants} | {"onnx": arts["onnx"]}

    def as_dict(a: Any) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(a)
        d["path"] = str(d["path"])
        return d

    return {
        "family": result.family,
        "shipped": shipped,
        "quantization": shipped,
        "artifacts": {k: as_dict(v) for k, v in artifacts.items()},
        "variants": report,
        "gate_metrics": report[shipped]["metrics"],
    }
