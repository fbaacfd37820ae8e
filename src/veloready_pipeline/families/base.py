"""The model-family interface and the one table every "which family?" question asks.

A *family* is one kind of per-athlete model (recovery XGBoost, zone MLP, injury LSTM).
Everything that differs between families is a member of `ModelFamily`: its name and
MLflow flavour, its dataset, the optional population fit before the chunks, the chunk
trainer (fit + gate), the verdict of a variant's metrics, the loss a champion is
compared with, the exporter (and which variant ships), its report and plot
conventions. The rest of the pipeline looks a family up by name in `FAMILIES`; an
unknown name raises `UnknownFamilyError` naming it and the known ones, never a silent
default.

Heavy libraries (torch, xgboost, coremltools, onnx, pandas) are imported inside the
methods of each family, never at module level: this package is imported by the CLI,
and `veloready --help` (and a mistake's one-line error) must stay fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from veloready_pipeline.config import GateThresholds, SearchSpace, Settings, TrainingConfig
from veloready_pipeline.gates import GateVerdict
from veloready_pipeline.results import ModelResult

if TYPE_CHECKING:
    import pandas as pd

# The MLflow flavours the registry can save and load (`lifecycle.registry` dispatches
# on them; its PIP_REQUIREMENTS has one entry per kind).
MODEL_KINDS: tuple[str, ...] = ("xgboost", "torch")

# How a family's per-model residual plot is drawn (`plots.model_svg`): one prediction
# per test day ("days"), sparse measured tests ("tests"), or a 0-100 risk against
# 0/1 labels ("risk").
PlotStyle = Literal["days", "tests", "risk"]


class UnknownFamilyError(ValueError):
    """A family name that is not in the table (the message names the known ones)."""


class ModelFamily(ABC):
    """One model family. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: the family's name in settings, registry names, summaries and manifests.
        model_kind: MLflow flavour of the registered model (one of `MODEL_KINDS`).
        default_gates / default_space / space_params: the family's default gate
            thresholds and Optuna search space, and the hyper-parameters its trainer
            reads; registering the family makes them settings defaults
            (`config.register_family_defaults`), merged with the YAML/env field by field.
        fits_population: True when `fit_population` fits a model over every athlete
            of the run *before* the chunks (the flow runs it as its own task).
        plot_unit / plot_style / plot_series_title: the residual plot's axis unit,
            layout and right panel's title.
        reports_baseline_rmse: the summary reports the best ``*_rmse`` baseline as
            ``baseline_rmse`` (families whose metric is an error, not a ranking).
    """

    name: ClassVar[str]
    model_kind: ClassVar[str]
    default_gates: ClassVar[GateThresholds]
    default_space: ClassVar[SearchSpace]
    space_params: ClassVar[frozenset[str]]
    fits_population: ClassVar[bool] = False
    plot_unit: ClassVar[str] = "value"
    plot_style: ClassVar[PlotStyle] = "days"
    plot_series_title: ClassVar[str] = "actual and predicted by day"
    reports_baseline_rmse: ClassVar[bool] = False

    def thresholds(self, settings: Settings) -> GateThresholds:
        """This family's configured gate thresholds."""
        try:
            return settings.gates[self.name]
        except KeyError:
            raise UnknownFamilyError(
                f"settings have no gates.{self.name} (built before the family was "
                "registered?)") from None

    def training_config(self, settings: Settings) -> TrainingConfig:
        """The part of ``settings`` this family's trainer (`models.*`) reads."""
        self.thresholds(settings)  # a family without gates fails naming the setting
        return TrainingConfig.from_settings(settings, self.name)

    @abstractmethod
    def dataset(self, athlete_rows: pd.DataFrame, settings: Settings) -> Any:
        """One athlete's features, labels and chronological split (or why there are none)."""

    def fit_population(self, frame: pd.DataFrame, athlete_ids: list[str],
                       settings: Settings) -> Any:
        """The run's population model over every athlete (only if `fits_population`)."""
        return None

    @abstractmethod
    def train_chunk(self, frame: pd.DataFrame, athlete_ids: list[str], settings: Settings,
                    warm_starts: dict[str, dict[str, Any]] | None = None,
                    population: Any = None) -> list[ModelResult]:
        """Train and gate a chunk of athletes: one result per id, in order (a missing or
        failing athlete is a ``skipped``/``failed`` result, never an exception)."""

    @abstractmethod
    def verdict(self, result: ModelResult, metrics: dict[str, float],
                settings: Settings) -> GateVerdict:
        """The gate's verdict on ``metrics`` measured on ``result``'s test rows (e.g. a
        quantized variant's), with the baselines and batch figures stored on ``result``."""

    @abstractmethod
    def score(self, result: ModelResult, model: Any) -> float:
        """Loss of ``model`` on ``result``'s test rows (lower is better): how a new model
        and the champion are compared."""

    @abstractmethod
    def export(self, result: ModelResult, folder: Path, name: str,
               settings: Settings) -> dict[str, Any]:
        """Write the app's files (Core ML, ONNX) for a registered model; the record says
        which variant ships (``shipped``, ``quantization``) and its ``gate_metrics``."""

    def pooled_figures(self, tests: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Report figures over every athlete's test rows together (``tests``: each
        model's ``y_true``, ``y_pred``, ``baseline_score``); none by default."""
        return {}


class FamilyTable:
    """The families by name, in registration order."""

    def __init__(self) -> None:
        self._families: dict[str, ModelFamily] = {}

    def register(self, family: ModelFamily) -> ModelFamily:
        """Add a family (its name must be new and its model kind one the registry saves);
        its default gates and search space become settings defaults."""
        from veloready_pipeline.config import FamilyDefaults, register_family_defaults

        name = getattr(family, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{type(family).__name__} has no name")
        if name in self._families:
            raise ValueError(f"family {name!r} is already registered")
        if family.model_kind not in MODEL_KINDS:
            raise ValueError(f"family {name!r}: model kind {family.model_kind!r} is not one "
                             f"the registry can save; known: {', '.join(MODEL_KINDS)}")
        register_family_defaults(name, FamilyDefaults(
            gates=family.default_gates, space=family.default_space,
            space_params=frozenset(family.space_params)))
        self._families[name] = family
        return family

    def unregister(self, name: str) -> None:
        """Remove a family (tests that register a family of their own)."""
        from veloready_pipeline.config import unregister_family_defaults

        self.get(name)
        del self._families[name]
        unregister_family_defaults(name)

    def get(self, name: str) -> ModelFamily:
        """The family called ``name``; `UnknownFamilyError` naming the known ones."""
        try:
            return self._families[name]
        except (KeyError, TypeError):
            raise UnknownFamilyError(
                f"unknown model family {name!r}; known: {', '.join(self._families) or 'none'}"
            ) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._families)

    def check(self, names: Sequence[str], setting: str = "families") -> list[str]:
        """``names`` if every one is registered, else one line naming the setting."""
        unknown = [n for n in names if n not in self._families]
        if unknown:
            raise UnknownFamilyError(
                f"{setting}: unknown model family {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(self._families) or 'none'}")
        return list(names)

    def __contains__(self, name: object) -> bool:
        return name in self._families

    def __iter__(self) -> Iterator[ModelFamily]:
        return iter(list(self._families.values()))


FAMILIES = FamilyTable()
