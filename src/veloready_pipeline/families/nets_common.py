"""What the PyTorch families share: the champion loss, the Core ML/ONNX export with the
shipped-variant choice, and the chunk trainer of the batched nets (zones, injury).

A passing network is exported as float32 + quantized Core ML variants (and ONNX);
each variant is re-gated with the weights read back from its own package, and the
smallest quantized variant that still passes ships (`choose_shipped_variant`).

torch and the converters are imported inside the functions (see `families.base`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from veloready_pipeline.config import GateThresholds, Settings
from veloready_pipeline.families.base import ModelFamily
from veloready_pipeline.gates import GateVerdict
from veloready_pipeline.results import ModelResult

if TYPE_CHECKING:
    import pandas as pd


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


# The hyper-parameters `models.net_tuning.fit_config` and the nets' ``hidden`` read.
NET_SPACE_PARAMS = frozenset({"hidden", "lr", "weight_decay", "prior_strength"})


class TorchNetFamily(ModelFamily):
    """A family whose model is a PyTorch module taking the raw feature rows.

    Subclasses give the exported output's name (``output_name``), the metric that is
    the champion loss and the variants' metric change (``loss_key``, lower is better)
    and `test_metrics`; the champion loss and the export come from here.
    """

    model_kind: ClassVar[str] = "torch"
    output_name: ClassVar[str]
    loss_key: ClassVar[str]

    @abstractmethod
    def test_metrics(self, result: ModelResult, model: Any) -> tuple[dict[str, float],
                                                                     np.ndarray]:
        """Metrics of ``model`` on ``result``'s test rows, and its predictions."""

    def score(self, result: ModelResult, model: Any) -> float:
        metrics, _ = self.test_metrics(result, model)
        return metrics[self.loss_key]

    def export(self, result: ModelResult, folder: Path, name: str,
               settings: Settings) -> dict[str, Any]:
        return export_torch_net(self, result, folder, name, settings)


def export_torch_net(family: TorchNetFamily, result: ModelResult, folder: Path, name: str,
                     settings: Settings) -> dict[str, Any]:
    """Export float32 + quantized variants; ship the smallest that still passes its gate.

    Each quantized variant's gate (``family.verdict``) is evaluated with the weights
    read back from its own Core ML package (dequantized and run in PyTorch), on the
    same test rows.
    """
    import torch

    from veloready_pipeline.export.coreml import export_torch

    X = np.asarray(result.test_X, dtype=np.float32)
    example = torch.as_tensor(X[:1])
    variants = ("float32", *settings.export.quantizations)
    # Each variant's module as read back from its saved package (export_torch reads
    # every package back after saving it): the gates below run on exactly those weights.
    from_package: dict[str, Any] = {}
    arts = export_torch(result.model, example, folder, name, "features", [family.output_name],
                        variants=variants, sample=torch.as_tensor(X), read_back=from_package)
    base_metrics, _ = family.test_metrics(result, result.model)
    float_size = arts["float32"].size_bytes
    key = family.loss_key
    report: dict[str, dict[str, Any]] = {}
    for variant in variants:
        model = result.model if variant == "float32" else from_package[variant]
        metrics, _ = family.test_metrics(result, model)
        verdict = family.verdict(result, metrics, settings)
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

    return {
        "family": result.family,
        "shipped": shipped,
        "quantization": shipped,
        "artifacts": {k: v.to_dict() for k, v in artifacts.items()},
        "variants": report,
        "gate_metrics": report[shipped]["metrics"],
    }


def to_result(fr: Any) -> ModelResult:
    """A batched trainer's `models.net_tuning.FamilyResult` as the flow's `ModelResult`."""
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


class BatchedNetFamily(TorchNetFamily):
    """A net family trained a chunk at a time (`models.net_tuning`) and gated with
    figures pooled over the chunk (the batch).

    Subclasses give `dataset`, `train_batch` (the chunk's results and pooled figures)
    and `gate_in_batch` (one athlete's verdict with those figures, which it also
    stores on the result so `verdict` can re-gate a variant later).
    """

    space_params: ClassVar[frozenset[str]] = NET_SPACE_PARAMS

    @abstractmethod
    def train_batch(self, datasets: Mapping[str, Any],
                    settings: Settings) -> tuple[Mapping[str, Any], dict[str, float]]:
        """Train every dataset's network together: results by athlete, pooled figures."""

    @abstractmethod
    def gate_in_batch(self, result: ModelResult, pooled: dict[str, float],
                      thresholds: GateThresholds) -> GateVerdict:
        """One trained athlete's verdict; stores the pooled figures it used on ``result``."""

    def train_chunk(self, frame: pd.DataFrame, athlete_ids: list[str], settings: Settings,
                    warm_starts: dict[str, dict[str, Any]] | None = None,
                    population: Any = None) -> list[ModelResult]:
        """Train a chunk of athletes' networks together and gate each one."""
        groups = dict(tuple(frame.groupby("athlete_id", sort=False)))
        datasets = {aid: self.dataset(groups[aid], settings)
                    for aid in athlete_ids if aid in groups}
        trained, pooled = self.train_batch(datasets, settings)
        results: list[ModelResult] = []
        thresholds = self.thresholds(settings)
        for aid in athlete_ids:
            if aid not in datasets:
                results.append(ModelResult(aid, self.name, "skipped",
                                           reason="no rows after as-of cut"))
                continue
            r = to_result(trained[aid])
            if r.status == "trained":
                r.verdict = self.gate_in_batch(r, pooled, thresholds)
                r.reason = r.verdict.reason()
            results.append(r)
        return results
