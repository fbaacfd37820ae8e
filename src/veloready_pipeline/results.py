"""The record every family produces for one athlete, consumed by registry and export."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from veloready_pipeline.gates import GateVerdict

Status = Literal["trained", "skipped", "failed"]


@dataclass
class ModelResult:
    """One athlete's model of one family, with everything needed downstream.

    ``status`` is ``trained`` when a model exists (it may still fail its gate),
    ``skipped`` when the athlete had too little data or lacked the family's inputs,
    ``failed`` when training raised (the reason holds the error).
    """

    athlete_id: str
    family: str
    status: Status
    reason: str = ""
    model: Any = None
    model_kind: str = ""  # "xgboost" | "torch"
    feature_names: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    verdict: GateVerdict | None = None
    n_rows: dict[str, int] = field(default_factory=dict)  # train/val/test
    data_window: dict[str, str] = field(default_factory=dict)  # start/end/test_start
    test_X: np.ndarray | None = None
    test_y: np.ndarray | None = None
    test_dates: list[str] = field(default_factory=list)
    test_pred: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "trained" and self.verdict is not None and self.verdict.passed
