"""Optuna helpers shared by the families: sampler choice and search spaces.

The search space lives in configuration (``tuning.spaces[family]``): a two-number
list is a range (int if both ends are ints, log-scaled when it spans > 2 decades or
names a rate/penalty), any other list is a set of choices. ``sampler: grid`` turns
the same space into a grid with ``grid_points`` values per range.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import optuna

from veloready_pipeline.config import TuningSettings

LOG_SCALE_HINTS = ("lr", "learning_rate", "weight_decay", "reg_lambda", "reg_alpha")


def derive_seed(seed: int, *parts: str) -> int:
    """A stable per-athlete/per-family seed derived from the run's seed."""
    key = "|".join((str(seed), *parts)).encode()
    return zlib.crc32(key) & 0x7FFFFFFF


def _is_range(values: list[Any]) -> bool:
    return len(values) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    )


def _is_log(name: str, low: float, high: float) -> bool:
    return low > 0 and (name in LOG_SCALE_HINTS or high / low > 100)


def grid_for(space: dict[str, list[Any]], points: int) -> dict[str, list[Any]]:
    """The grid search space: ``points`` values per range, choices as they are."""
    grid: dict[str, list[Any]] = {}
    for name, values in space.items():
        if _is_range(values):
            low, high = values
            if _is_log(name, float(low), float(high)):
                axis = np.geomspace(float(low), float(high), points)
            else:
                axis = np.linspace(float(low), float(high), points)
            if isinstance(low, int) and isinstance(high, int):
                grid[name] = sorted({int(round(v)) for v in axis})
            else:
                grid[name] = [float(v) for v in axis]
        else:
            grid[name] = list(values)
    return grid


def make_sampler(tuning: TuningSettings, space: dict[str, list[Any]], seed: int) -> Any:
    """TPE or grid sampler, seeded."""
    if tuning.sampler == "grid":
        return optuna.samplers.GridSampler(grid_for(space, tuning.grid_points), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, tuning.n_trials))


def suggest(trial: optuna.Trial, space: dict[str, list[Any]]) -> dict[str, Any]:
    """Draw one parameter set from ``space`` (works for TPE and grid samplers)."""
    params: dict[str, Any] = {}
    for name, values in space.items():
        if _is_range(values):
            low, high = values
            if isinstance(low, int) and isinstance(high, int):
                params[name] = trial.suggest_int(name, low, high)
            else:
                params[name] = trial.suggest_float(
                    name, float(low), float(high), log=_is_log(name, float(low), float(high))
                )
        else:
            params[name] = trial.suggest_categorical(name, values)
    return params


def new_study(tuning: TuningSettings, space: dict[str, list[Any]], seed: int,
              pruner: Any | None = None) -> optuna.Study:
    """An in-memory study (a storage backend costs ~45 ms per trial here)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction="minimize", sampler=make_sampler(tuning, space, seed), pruner=pruner
    )


def n_trials_for(tuning: TuningSettings, space: dict[str, list[Any]]) -> int:
    """Trials to run: the configured count, capped at the grid size for grid search."""
    if tuning.sampler == "grid":
        size = int(np.prod([len(v) for v in grid_for(space, tuning.grid_points).values()]))
        return min(tuning.n_trials, size)
    return tuning.n_trials
