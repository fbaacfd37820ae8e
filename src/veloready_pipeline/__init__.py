"""VeloReady Pipeline: per-athlete models, gated, registered and shipped to phones."""

__version__ = "0.1.0"

# The built-in model families register themselves with the settings (their names,
# default gate thresholds and search spaces) when the package is imported, so settings
# accept exactly the registered families while `config` never imports a family (the
# families import config). Light: the families import torch/xgboost only when they train.
from veloready_pipeline import families as _families  # noqa: E402, F401
