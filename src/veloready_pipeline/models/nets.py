"""The two PyTorch families (zones MLP, injury LSTM) as the weekly flow sees them.

Adapts the batched trainers (`models.zones`, `models.injury`, many athletes' networks
trained together) to the flow's `ModelResult`, applies the family gates, scores a
champion on new test rows, and exports a passing network as float32 + quantized Core
ML variants, shipping the smallest variant whose *quantized weights* still pass.

Injury gate rationale: a personal test part (15 % of ~5 months) holds zero to two
injury events, so a per-athlete AUROC is mostly undefined (no event) or a coin of one
event. What a per-athlete verdict can honestly say is spelled out in `injury_verdict`:
the athlete's own risk is better calibrated than their base rate, the family ranks real
events well on the batch's pooled test parts (enough events, AUROC >= 0.75, better than
the warning-sign score on the same rows), and where the athlete's own test part does
hold an event, their own ranking is better than the warning-sign score's too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from veloready_pipeline.config import GateThresholds, Settings
from veloready_pipeline.gates import (
    Check,
    GateVerdict,
    regression_metrics,
    zone_gate,
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


def zone_verdict(metrics: dict[str, float], baselines: dict[str, float],
                 pooled: dict[str, float], thresholds: GateThresholds) -> GateVerdict:
    """Zones: FTP error in watts, non-inferior to "FTP stays at the last test" within a
    test's noise, and the batch's pooled MAE better than the last test's
    (`gates.zone_gate`; ``pooled`` from `models.zones.pooled_zone_metrics`)."""
    return zone_gate(metrics, baselines, pooled, thresholds)


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
