"""Training dispatch: a family's population model and its chunk trainer, the verdict
log lines, and the loss used to compare a new model with the champion (each looked up
in `families.FAMILIES`; an unknown family fails naming the known ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from veloready_pipeline.config import Settings
from veloready_pipeline.families import FAMILIES
from veloready_pipeline.logs import get_logger
from veloready_pipeline.results import ModelResult

log = get_logger(__name__)


def fit_population(family: str, frame: pd.DataFrame, athlete_ids: list[str],
                   settings: Settings) -> Any:
    """A family's population model over every athlete of the run, fitted once before
    the chunks (None for families that fit theirs inside each chunk, or none at all)."""
    from veloready_pipeline.timing import time_stage

    fam = FAMILIES.get(family)
    if not fam.fits_population:
        return None
    with time_stage("train", family=family, athletes=len(athlete_ids), part="population"):
        return fam.fit_population(frame, athlete_ids, settings)


def train_family(family: str, frame: pd.DataFrame, athlete_ids: list[str],
                 settings: Settings,
                 warm_starts: dict[str, dict[str, Any]] | None = None,
                 population: Any = None) -> list[ModelResult]:
    """Train one family for a chunk of athletes (timed as stage ``train``, see `timing`).

    ``population``: the family's model from `fit_population`, shared by every chunk;
    without it a family that fits one (recovery) fits it on the chunk's athletes.
    """
    from veloready_pipeline.timing import time_stage

    fam = FAMILIES.get(family)
    with time_stage("train", family=family, athletes=len(athlete_ids)):
        results = fam.train_chunk(frame, athlete_ids, settings, warm_starts, population)
    log_verdicts(family, results)
    return results


def log_verdicts(family: str, results: Sequence[ModelResult]) -> None:
    """One line per athlete model (its gate verdict or why there is none) and a tally."""
    tally: dict[str, int] = {}
    for r in results:
        kind = ("passed" if r.passed else "gate failed" if r.status == "trained"
                else r.status)
        tally[kind] = tally.get(kind, 0) + 1
        if r.status == "failed":
            log.warning("%s %s: training failed: %s", family, r.athlete_id, r.reason)
        elif r.status == "trained":  # the verdict's reason starts with passed/failed
            log.info("%s %s: gate %s", family, r.athlete_id, r.reason or kind)
        else:
            log.info("%s %s: %s: %s", family, r.athlete_id, kind, r.reason or "no reason given")
    log.info("train %s: %d athletes: %s", family, len(results),
             ", ".join(f"{n} {k}" for k, n in sorted(tally.items())) or "none")


def score_model(result: ModelResult, model: Any) -> float:
    """Loss of ``model`` on ``result``'s test part (lower is better).

    Used to compare a new model and the current champion on the same test rows.
    """
    if result.test_X is None or result.test_y is None:
        return float("inf")
    return FAMILIES.get(result.family).score(result, model)
