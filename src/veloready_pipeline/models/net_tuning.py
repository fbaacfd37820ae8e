"""Population tuning and the net family trainer (zones MLP, injury LSTM).

A rider has ~50-120 training rows and, for injuries, one to three events: too little
for a network on its own. Each trial therefore first fits a **population network**
on all athletes of the batch (one per architecture, cached across trials), copies it
to every athlete and **fine-tunes it per athlete** with an L2 pull towards the
population weights (``prior_strength``): a personal model that leans on the
population where the athlete's data are thin. The starting weights are a candidate
too, so "no personalisation" wins when the athlete's validation rows say so.

* `tune_batched` runs Optuna where one trial = one hyper-parameter setting applied to
  the whole batch (objective: mean validation loss, pruned per epoch chunk); every
  athlete's validation loss is recorded in every trial and, with
  ``tuning.net_pick = "athlete"``, each athlete keeps its own best trial (default
  ``"batch"``: the best mean - far less noisy with 10-20 validation rows per rider);
* `train_net_family` batches, tunes, unstacks and evaluates every athlete of one
  network family.

The stacked modules are `models.net_layers`, the fit loop `models.net_fit`. The naive
references of the benchmarks (``replay_naive``, ``tune_single``) live in
``bench/naive_reference.py``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import optuna
import torch
from torch import nn

from veloready_pipeline.config import Family, TrainingConfig
from veloready_pipeline.features_nets import NetDataset
from veloready_pipeline.models.net_fit import (
    FitConfig,
    FitOutcome,
    LossKind,
    fit_batched,
    fit_single,
    per_athlete_loss,
    target_normalized,
)
from veloready_pipeline.models.net_layers import (
    BatchedModule,
    PlainNet,
    normalisation_stats,
    pad_stack,
)
from veloready_pipeline.tuning import derive_seed, n_trials_for, new_study, suggest

# --------------------------------------------------------------------------- results


@dataclass
class FamilyResult:
    """One athlete's network of one family: the model, how it was chosen, how it scores.

    ``status`` is ``trained`` when a model exists (it may still fail its gate) and
    ``skipped`` when the athlete had too little labelled data (``reason`` says why).
    Metrics are computed on the untouched test part; baselines on the same rows.
    """

    athlete_id: str
    family: str
    status: Literal["trained", "skipped", "failed"]
    reason: str = ""
    model: nn.Module | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    feature_names: list[str] = field(default_factory=list)
    test_dates: list[str] = field(default_factory=list)
    test_y: np.ndarray | None = None
    test_pred: np.ndarray | None = None
    test_baseline: np.ndarray | None = None
    test_X: np.ndarray | None = None
    data_window: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ tuning


@dataclass
class NetFamily:
    """How a family builds its plain network and which loss it trains with."""

    name: Family
    make_plain: Callable[[dict[str, Any], int, int], PlainNet]  # (params, n_in, n_out)
    batched_cls: type[BatchedModule]
    loss: LossKind
    n_out: int
    pooled_stats: bool = True  # normalise with the batch's pooled training statistics
    population_lr: float = 3e-3
    population_weight_decay: float = 1e-4


@dataclass
class TrainData:
    """One athlete's train/validation arrays (already split, NaN-free)."""

    athlete_id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # x_mean/x_std/y_mean/y_std
    # Per-athlete buffer values of its personal module (zones: the load anchor's
    # ``gain``); the population module gets their mean.
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    # False: too few validation rows to pick a fine-tune on; the athlete keeps the
    # population network (`tune_batched`).
    personal: bool = True


@dataclass
class TunedAthlete:
    """The per-athlete pick over every trial of a batched study."""

    athlete_id: str
    model: PlainNet
    params: dict[str, Any]
    val_loss: float
    trial: int
    best_epoch: int
    val_by_trial: list[float]


@dataclass
class TrialRecord:
    """What one trial of a batched study ran (the benchmark replays it naively)."""

    number: int
    params: dict[str, Any]
    epochs_run: int
    pruned: bool
    objective: float


# Population networks are fitted with fixed, conservative settings per family
# (`NetFamily.population_lr` / ``population_weight_decay``): they only have to be a
# sensible prior, and fixing them lets one fit per architecture serve every trial
# (the tuned lr / prior strength act on the personal fine-tune).
POPULATION_ID = "__population__"


def fit_config(config: TrainingConfig, family: str, params: dict[str, Any],
               loss: LossKind) -> FitConfig:
    """Optimiser settings for one trial's personal fine-tune."""
    nets = config.tuning
    return FitConfig(
        lr=float(params.get("lr", 0.01)),
        weight_decay=float(params.get("weight_decay", 0.0)),
        max_epochs=int(getattr(nets, f"{family}_max_epochs")),
        patience=int(nets.net_patience),
        eval_every=int(nets.net_eval_every),
        loss=loss,
        prior_strength=float(params.get("prior_strength", 0.0)),
    )


def init_plain(family: NetFamily, params: dict[str, Any], n_in: int, seed: int,
               athlete_id: str, trial: int) -> PlainNet:
    """A freshly initialised plain network, seeded per (run seed, id, family, trial)."""
    torch.manual_seed(derive_seed(seed, athlete_id, family.name, str(trial)))
    return family.make_plain(params, n_in, family.n_out)


def attach_stats(family: NetFamily, athletes: Sequence[TrainData]) -> None:
    """Normalisation statistics from training rows only, stored on each `TrainData`.

    Pooled over every athlete of the batch when the family asks for it (both network
    families do: relative power, FTP change, load and HRV change mean the same thing
    for every rider, and the population network needs one scale); per athlete
    otherwise. The statistics become buffers of each exported module, so the phone
    applies the same scaling.
    """
    template = family.make_plain({}, athletes[0].x_train.shape[-1], family.n_out)

    def transformed(data: TrainData) -> tuple[np.ndarray, np.ndarray | None]:
        set_stats(template, data.buffers)
        with torch.no_grad():
            x = torch.as_tensor(data.x_train, dtype=torch.float32)
            z = template.features(x).numpy()
            t = None
            if family.loss == "mse":
                y = torch.as_tensor(data.y_train, dtype=torch.float32)
                t = template.target(x, y).numpy()
        return z, t

    parts = [transformed(a) for a in athletes]
    if family.pooled_stats:
        z_all = np.concatenate([z.reshape(-1, z.shape[-1]) for z, _ in parts])
        pooled = dict(zip(("x_mean", "x_std"), normalisation_stats(z_all), strict=True))
        if family.loss == "mse":
            t_all = np.concatenate([t for _, t in parts if t is not None])
            pooled |= dict(zip(("y_mean", "y_std"), normalisation_stats(t_all), strict=True))
        for a in athletes:
            a.stats = dict(pooled)
        return
    for a, (z, t) in zip(athletes, parts, strict=True):
        a.stats = dict(zip(("x_mean", "x_std"), normalisation_stats(z), strict=True))
        if t is not None:
            a.stats |= dict(zip(("y_mean", "y_std"), normalisation_stats(t), strict=True))


def set_stats(module: nn.Module, stats: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        for name, value in stats.items():
            getattr(module, name).copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)))


def _set_batched_buffers(model: BatchedModule, athletes: Sequence[TrainData]) -> None:
    """Each athlete's own `TrainData.buffers` into its slot of a batched module."""
    if not athletes or not athletes[0].buffers:
        return
    with torch.no_grad():
        for name in athletes[0].buffers:
            getattr(model, name).copy_(torch.stack([
                torch.as_tensor(np.asarray(a.buffers[name], dtype=np.float32))
                for a in athletes]))


def _mean_buffers(athletes: Sequence[TrainData]) -> dict[str, np.ndarray]:
    if not athletes or not athletes[0].buffers:
        return {}
    return {name: np.mean([np.asarray(a.buffers[name], dtype=np.float32) for a in athletes],
                          axis=0) for name in athletes[0].buffers}


def fit_population(family: NetFamily, athletes: Sequence[TrainData], params: dict[str, Any],
                   config: TrainingConfig) -> tuple[PlainNet, float]:
    """One network on every athlete's training rows together (the personal prior).

    Early-stopped on all validation rows together. Needs pooled statistics (the
    athletes' ``stats`` must be identical), which `attach_stats` provides.
    """
    pooled = TrainData(
        POPULATION_ID,
        np.concatenate([a.x_train for a in athletes]),
        np.concatenate([a.y_train for a in athletes]),
        np.concatenate([a.x_val for a in athletes]),
        np.concatenate([a.y_val for a in athletes]),
        stats=athletes[0].stats,
    )
    module = init_plain(family, params, pooled.x_train.shape[-1], config.seed,
                        POPULATION_ID, int(params.get("hidden", 0)))
    set_stats(module, pooled.stats | _mean_buffers(athletes))
    cfg = fit_config(config, family.name, {"lr": family.population_lr,
                                             "weight_decay": family.population_weight_decay},
                     family.loss)
    cfg.max_epochs = config.tuning.population_max_epochs
    if config.tuning.population_batch_rows > 0:
        # Mini-batches: many more optimiser steps per pass over the pooled rows.
        module, val, _ = fit_single(
            module, pooled.x_train, pooled.y_train, pooled.x_val, pooled.y_val, cfg,
            batch_rows=config.tuning.population_batch_rows,
            seed=derive_seed(config.seed, family.name, POPULATION_ID))
        return module, val
    model = family.batched_cls([module])
    outcome = fit_batched(model, pad_stack([pooled.x_train], [pooled.y_train]),
                          pad_stack([pooled.x_val], [pooled.y_val]), cfg)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(outcome.best_state[k])
    return model.unstack(0), float(outcome.best_val[0])


def _valid_params(params: Mapping[str, Any], space: Mapping[str, list[Any]]) -> dict[str, Any]:
    # Last week's parameters that still fit this week's space (a changed choice list or
    # range must not make the enqueued trial fail).
    out: dict[str, Any] = {}
    for name, values in space.items():
        if name not in params:
            continue
        v = params[name]
        is_range = len(values) == 2 and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in values)
        if (is_range and isinstance(v, int | float) and values[0] <= v <= values[1]) or (
                not is_range and v in values):
            out[name] = v
    return out


def median_pruner(n_trials: int) -> optuna.pruners.BasePruner:
    # Prune a trial whose mean validation loss after a chunk is worse than the median of
    # earlier trials at the same chunk; wait for a few complete trials and chunks first.
    # A fine-tune starts from the population network, so its first chunk already says
    # whether the setting helps: one chunk of warm-up is enough (measured on 50 realistic
    # athletes, injury: 40 % fewer trial epochs, same pooled test AUROC).
    return optuna.pruners.MedianPruner(
        n_startup_trials=max(2, min(5, n_trials // 4)), n_warmup_steps=1
    )


def tune_batched(
    family: NetFamily,
    athletes: Sequence[TrainData],
    config: TrainingConfig,
    batch_key: str = "",
    warm_start: Sequence[dict[str, Any]] = (),
) -> tuple[list[TunedAthlete], dict[str, Any]]:
    """Optuna over a whole batch of athletes; per-athlete pick of the best trial.

    Each trial draws an architecture (``hidden``) and fine-tuning settings (``lr``,
    ``prior_strength``). Its architecture's population network (fitted once per
    architecture on every athlete's training rows, then cached) is copied to every
    athlete and fine-tuned on that athlete's own rows, all athletes at once, with an
    L2 pull towards the population weights: a personal model that leans on the
    population where the athlete's own data are thin. Objective: mean best
    validation loss over athletes, reported per epoch chunk for pruning. Every
    athlete's validation loss is recorded in every trial (pruned ones included: their
    snapshots are valid, just less trained) and each athlete keeps its own best trial.

    Returns:
        the per-athlete picks and a summary (trials, pruned, population fits, timings,
        and the trial records the naive benchmark replays).
    """
    space = config.space
    n_trials = n_trials_for(config.tuning, space)
    seed = derive_seed(config.seed, family.name, batch_key)
    study = new_study(config.tuning, space, seed, pruner=median_pruner(n_trials))
    if config.tuning.warm_start and config.tuning.sampler == "tpe":
        for params in warm_start:
            study.enqueue_trial(_valid_params(params, space))
    attach_stats(family, athletes)
    train = pad_stack([a.x_train for a in athletes], [a.y_train for a in athletes])
    val = pad_stack([a.x_val for a in athletes], [a.y_val for a in athletes])
    trials = _Trials.start(len(athletes), config.tuning.net_pick)
    populations: dict[Any, tuple[PlainNet, float]] = {}
    started = time.perf_counter()
    pop_seconds = 0.0
    for number in range(n_trials):
        trial = study.ask()
        params = suggest(trial, space)
        arch = params.get("hidden")
        if arch not in populations:
            t0 = time.perf_counter()
            populations[arch] = fit_population(family, athletes, params, config)
            pop_seconds += time.perf_counter() - t0
        model = family.batched_cls([populations[arch][0]] * len(athletes))
        _set_batched_buffers(model, athletes)
        cfg = fit_config(config, family.name, params, family.loss)
        outcome = fit_batched(model, train, val, cfg, _pruning_report(trial))
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(outcome.best_state[k])
        objective = trials.add(number, outcome, model, params)
        if outcome.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, objective)
    if config.tuning.net_pick == "batch":
        trials.pick_batch()
    picks = _picks(family, athletes, trials, populations)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary = {
        "n_trials": n_trials,
        "n_pruned": sum(r.pruned for r in trials.records),
        "sampler": config.tuning.sampler,
        "seconds": time.perf_counter() - started,
        "population_seconds": pop_seconds,
        "population_fits": len(populations),
        "population_val_loss": {str(k): v[1] for k, v in populations.items()},
        "batch_best_params": dict(study.best_params) if complete else {},
        "n_athletes": len(athletes),
        "share_kept_population": float(np.mean(trials.best_epoch == 0)),
        "trials": trials.records,
    }
    return picks, summary


def _pruning_report(trial: optuna.Trial) -> Callable[[int, float], bool]:
    """`fit_batched`'s report callback: the chunk's mean best loss to Optuna's pruner."""

    def report(step: int, value: float) -> bool:
        if not math.isfinite(value):
            return False
        trial.report(value, step)
        return trial.should_prune()

    return report


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.inf


@dataclass
class _Trials:
    """Per-athlete bookkeeping over the trials of one batched study (`tune_batched`)."""

    net_pick: str
    best_val: np.ndarray
    best_trial: np.ndarray
    best_epoch: np.ndarray
    val_by_trial: list[np.ndarray] = field(default_factory=list)
    epochs_by_trial: list[np.ndarray] = field(default_factory=list)
    # The fitted batched modules still needed for a pick, by trial number.
    kept: dict[int, tuple[BatchedModule, dict[str, Any]]] = field(default_factory=dict)
    records: list[TrialRecord] = field(default_factory=list)
    batch_best: tuple[tuple[bool, float], int] | None = None

    @classmethod
    def start(cls, n_athletes: int, net_pick: str) -> _Trials:
        return cls(net_pick, np.full(n_athletes, math.inf), np.full(n_athletes, -1),
                   np.zeros(n_athletes, dtype=int))

    def add(self, number: int, outcome: FitOutcome, model: BatchedModule,
            params: dict[str, Any]) -> float:
        """Record one finished (or pruned) trial; returns its objective."""
        self.val_by_trial.append(outcome.best_val)
        self.epochs_by_trial.append(outcome.best_epoch)
        better = outcome.best_val < self.best_val
        self.best_val = np.where(better, outcome.best_val, self.best_val)
        self.best_trial = np.where(better, number, self.best_trial)
        self.best_epoch = np.where(better, outcome.best_epoch, self.best_epoch)
        self.kept[number] = (model, params)
        if self.net_pick == "athlete":
            self.kept = {t: self.kept[t] for t in set(self.best_trial.tolist()) | {number}
                         if t >= 0}
        else:  # keep only the best trial so far by the batch objective
            score = (outcome.pruned, _mean_finite(outcome.best_val))
            if self.batch_best is None or score < self.batch_best[0]:
                if self.batch_best is not None:
                    self.kept.pop(self.batch_best[1], None)
                self.batch_best = (score, number)
            else:
                self.kept.pop(number, None)
        objective = _mean_finite(outcome.best_val)
        self.records.append(TrialRecord(number, dict(params), outcome.epochs_run,
                                        outcome.pruned, objective))
        return objective

    def pick_batch(self) -> None:
        """One setting for the whole batch: the trial with the best mean validation loss.

        Complete trials first. A rider's 10-20 validation rows are too few to pick among
        trials reliably; the mean over the batch is not.
        """
        order = sorted(self.records, key=lambda r: (r.pruned, r.objective))
        chosen = order[0].number
        self.best_trial[:] = chosen
        self.best_val = self.val_by_trial[chosen].copy()
        self.best_epoch = self.epochs_by_trial[chosen].copy()


def _picks(family: NetFamily, athletes: Sequence[TrainData], trials: _Trials,
           populations: Mapping[Any, tuple[PlainNet, float]]) -> list[TunedAthlete]:
    """Each athlete's unstacked module of its chosen trial."""
    picks = []
    for i, data in enumerate(athletes):
        t = int(trials.best_trial[i])
        if t < 0:  # every trial diverged for this athlete: keep the last trial
            t = max(trials.kept)
        model, params = trials.kept[t]
        plain = model.unstack(i)
        val_i, epoch_i = float(trials.best_val[i]), int(trials.best_epoch[i])
        if not data.personal:
            # Too little validation evidence to choose a fine-tune over the population
            # network: the athlete gets the population network (with its own buffers).
            plain = copy.deepcopy(populations[params.get("hidden")][0])
            set_stats(plain, data.buffers)
            plain.eval()
            val_i, epoch_i = _val_loss(plain, data, family.loss), 0
        picks.append(
            TunedAthlete(
                athlete_id=data.athlete_id,
                model=plain,
                params=dict(params),
                val_loss=val_i,
                trial=t,
                best_epoch=epoch_i,
                val_by_trial=[float(v[i]) for v in trials.val_by_trial],
            )
        )
    return picks


def _val_loss(module: PlainNet, data: TrainData, kind: LossKind) -> float:
    """One plain module's mean validation loss on its athlete's validation rows."""
    with torch.no_grad():
        x = torch.as_tensor(data.x_val, dtype=torch.float32)[None]
        y = torch.as_tensor(data.y_val, dtype=torch.float32)[None]
        out = module.forward_normalized(module.normalize_x(x))
        target = target_normalized(module, x, y, kind)
        return float(per_athlete_loss(out, target, torch.ones(x.shape[:2]), kind)[0])


# ------------------------------------------------------------------ family driver


def train_data(ds: NetDataset) -> TrainData:
    """The arrays the batched trainer needs from a split dataset."""
    return TrainData(ds.athlete_id, ds.X[ds.train_idx], ds.y[ds.train_idx],
                     ds.X[ds.val_idx], ds.y[ds.val_idx])


def _skipped(family: str, ds: NetDataset) -> FamilyResult:
    return FamilyResult(
        ds.athlete_id, family, "skipped", reason=ds.skip_reason,
        feature_names=list(ds.feature_names), n_train=len(ds.train_idx),
        n_val=len(ds.val_idx), n_test=len(ds.test_idx), notes=list(ds.notes),
    )


def _warm_params(batch: Sequence[NetDataset],
                 warm_starts: Mapping[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    # Last week's per-athlete picks, de-duplicated: each distinct setting is tried once
    # for the whole batch (at most 3, so warm starts never eat the trial budget).
    seen: list[dict[str, Any]] = []
    for ds in batch:
        params = (warm_starts or {}).get(ds.athlete_id)
        if params and params not in seen:
            seen.append(params)
    return seen[:3]


Evaluator = Callable[[NetDataset, nn.Module],
                     tuple[dict[str, float], dict[str, float], np.ndarray]]


def train_net_family(
    family: NetFamily,
    datasets: Mapping[str, NetDataset],
    config: TrainingConfig,
    warm_starts: Mapping[str, dict[str, Any]] | None,
    evaluate: Evaluator,
    prepare: Callable[[Sequence[NetDataset]], list[TrainData]] | None = None,
) -> dict[str, FamilyResult]:
    """Batch, tune, unstack and evaluate every athlete of one network family.

    Athletes with a ``skip_reason`` get a ``skipped`` result. The others are trained
    in batches of ``config.execution.chunk_size`` (bounded memory); ``evaluate``
    scores each unstacked module on its athlete's untouched test part. ``prepare``
    turns a batch's datasets into the rows trained on (default `train_data`: every
    training/validation row). A pick whose best epoch is 0 kept the population network
    (no fine-tune beat it on the athlete's validation rows): ``params["source"]`` says
    ``population`` or ``personal``.
    """
    torch.set_num_threads(config.execution.torch_threads)
    results: dict[str, FamilyResult] = {}
    ready = [ds for ds in datasets.values() if not ds.skip_reason]
    for ds in datasets.values():
        if ds.skip_reason:
            results[ds.athlete_id] = _skipped(family.name, ds)
    size = config.execution.chunk_size
    for start in range(0, len(ready), size):
        batch = ready[start : start + size]
        key = f"{batch[0].athlete_id}..{batch[-1].athlete_id}:{len(batch)}"
        data = prepare(batch) if prepare is not None else [train_data(ds) for ds in batch]
        picks, summary = tune_batched(family, data, config,
                                      batch_key=key,
                                      warm_start=_warm_params(batch, warm_starts))
        summary["trials"] = [asdict(r) for r in summary["trials"]]  # JSON-friendly
        for ds, pick in zip(batch, picks, strict=True):
            metrics, baselines, pred = evaluate(ds, pick.model)
            metrics["val_loss"] = pick.val_loss
            te = ds.test_idx
            results[ds.athlete_id] = FamilyResult(
                athlete_id=ds.athlete_id,
                family=family.name,
                status="trained",
                model=pick.model,
                params=pick.params | {"trial": pick.trial, "best_epoch": pick.best_epoch,
                                      "source": ("population" if pick.best_epoch == 0
                                                 else "personal"),
                                      "n_trials": summary["n_trials"],
                                      "sampler": summary["sampler"]},
                metrics=metrics,
                baselines=baselines,
                n_train=len(ds.train_idx),
                n_val=len(ds.val_idx),
                n_test=len(te),
                feature_names=list(ds.feature_names),
                test_dates=[str(d) for d in ds.dates[te]],
                test_y=ds.y[te],
                test_pred=pred,
                test_baseline=ds.baseline[te],
                test_X=ds.X[te],
                data_window=ds.data_window(),
                notes=list(ds.notes),
                extra={"batch": summary, "val_by_trial": pick.val_by_trial},
            )
    return {aid: results[aid] for aid in datasets if aid in results}
