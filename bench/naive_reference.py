"""The naive references of the nets benchmarks (bench-only, not part of the pipeline).

* `replay_naive` replays a batched study's trials one athlete at a time (same
  parameters, same population networks, same stopping rule), so a benchmark compares
  batching alone;
* `tune_single` is the plain per-athlete loop: its own Optuna study, every trial a
  network fitted alone from scratch.

Used by ``bench/nets_batched_vs_naive.py``, ``bench/weekly_run.py`` and the
equivalence test in ``tests/test_models_zones.py``. Import it as
``bench.naive_reference`` with the repository root on ``sys.path``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna

from veloready_pipeline.config import TrainingConfig
from veloready_pipeline.models.net_fit import fit_single
from veloready_pipeline.models.net_layers import PlainNet, clone_template
from veloready_pipeline.models.net_tuning import (
    NetFamily,
    TrainData,
    TrialRecord,
    TunedAthlete,
    attach_stats,
    fit_config,
    fit_population,
    init_plain,
    median_pruner,
    set_stats,
)
from veloready_pipeline.tuning import derive_seed, n_trials_for, new_study, suggest


def replay_naive(
    family: NetFamily,
    athletes: Sequence[TrainData],
    config: TrainingConfig,
    records: Sequence[TrialRecord],
    only: Sequence[int] | None = None,
) -> tuple[list[TunedAthlete], dict[str, float]]:
    """The naive loop on the same trials: population fits, then one athlete at a time.

    Replays a batched study's trials (same parameters; a pruned trial runs the same
    number of epochs) with plain modules and `fit_single`, so the benchmark compares
    batching alone - same data, same initial weights, same stopping rule. Statistics
    and population networks use every athlete given (as the batched path did); the
    per-athlete loop runs over ``only`` (indices; default all) so a sample can be
    timed.

    Returns:
        the picks of the looped athletes and the seconds spent on population fits and
        on the per-athlete loop.
    """
    attach_stats(family, athletes)
    looped = [athletes[i] for i in (range(len(athletes)) if only is None else only)]
    populations: dict[Any, PlainNet] = {}
    best: list[TunedAthlete | None] = [None] * len(looped)
    history: list[list[float]] = [[] for _ in looped]
    chosen_picks: list[list[TunedAthlete]] = [[] for _ in looped]
    pop_s = loop_s = 0.0
    for rec in records:
        arch = rec.params.get("hidden")
        if arch not in populations:
            t0 = time.perf_counter()
            populations[arch] = fit_population(family, athletes, rec.params, config)[0]
            pop_s += time.perf_counter() - t0
        cfg = fit_config(config, family.name, rec.params, family.loss)
        t0 = time.perf_counter()
        for i, data in enumerate(looped):
            module = clone_template((type(populations[arch]),
                                      dict(populations[arch].init_kwargs)))
            module.load_state_dict(populations[arch].state_dict())
            set_stats(module, data.buffers)
            module, val, epoch = fit_single(module, data.x_train, data.y_train, data.x_val,
                                            data.y_val, cfg, max_epochs=rec.epochs_run)
            history[i].append(val)
            tuned = TunedAthlete(data.athlete_id, module, dict(rec.params), val, rec.number,
                                 epoch, [])
            if config.tuning.net_pick == "batch":
                chosen_picks[i].append(tuned)
            current = best[i]
            if current is None or val < current.val_loss:
                best[i] = tuned
        loop_s += time.perf_counter() - t0
    if config.tuning.net_pick == "batch":
        # Same rule as the batched path: the trial with the best mean validation loss.
        def objective(k: int) -> tuple[bool, float]:
            vals = np.array([h[k] for h in history])
            finite = vals[np.isfinite(vals)]
            return (records[k].pruned, float(finite.mean()) if len(finite) else math.inf)

        chosen = min(range(len(records)), key=objective)
        best = [chosen_picks[i][chosen] for i in range(len(looped))]
    picks = []
    for pick, hist in zip(best, history, strict=True):
        assert pick is not None
        pick.val_by_trial = hist
        picks.append(pick)
    return picks, {"population_seconds": pop_s, "loop_seconds": loop_s}


def tune_single(family: NetFamily, data: TrainData, config: TrainingConfig) -> TunedAthlete:
    """The naive loop's unit: one athlete's own Optuna study, one plain network per trial.

    What a per-athlete Python loop does without batching: the same search space,
    sampler, trial budget and pruner as `tune_batched`, but a study per athlete and
    every trial a plain `nn.Module` trained alone from a fresh initialisation (there is
    no population network to start from) for up to ``population_max_epochs`` epochs
    with the same early stopping; normalisation from the athlete's own training rows.
    The benchmarks time it against the batched path on the same athletes.
    """
    space = config.space
    n_trials = n_trials_for(config.tuning, space)
    study = new_study(config.tuning, space,
                      derive_seed(config.seed, family.name, data.athlete_id, "naive"),
                      pruner=median_pruner(n_trials))
    attach_stats(family, [data])
    best: TunedAthlete | None = None
    history: list[float] = []
    for number in range(n_trials):
        trial = study.ask()
        params = suggest(trial, space)
        module = init_plain(family, params, data.x_train.shape[-1], config.seed,
                            data.athlete_id, number)
        set_stats(module, data.stats | data.buffers)
        cfg = fit_config(config, family.name, params, family.loss)
        cfg.max_epochs = config.tuning.population_max_epochs
        pruned = False

        def report(step: int, value: float, trial: optuna.Trial = trial) -> bool:
            nonlocal pruned
            trial.report(value, step)
            pruned = trial.should_prune()
            return pruned

        module, val, epoch = fit_single(module, data.x_train, data.y_train, data.x_val,
                                        data.y_val, cfg, report=report)
        history.append(val)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, val if math.isfinite(val) else math.inf)
        if best is None or val < best.val_loss:
            best = TunedAthlete(data.athlete_id, module, dict(params), val, number, epoch, [])
    assert best is not None
    best.val_by_trial = history
    return best
