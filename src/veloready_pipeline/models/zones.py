"""Zones family: a personal 3-hidden-layer MLP from recent efforts to FTP and anchors.

Inputs are `veloready_pipeline.features_nets.FEATURE_NAMES_ZONES` (recent best powers
at 8 durations, CTL/ATL/TSB, recovery, recent training, the last FTP test and the
load change since it); outputs are FTP, Z2 ceiling, Z4 floor and VO2max power in watts
(`LABEL_NAMES_ZONES`). `zones_calc` turns them into the six zones shown in the app.

The net predicts what a training-load anchor misses: its outputs are relative to
``last test x (1 + gain x change of 10-day smoothed CTL since that test / smoothed CTL
at the test)`` (Banister: performance follows fitness), with each rider's ``gain``
estimated from their own training-part tests and shrunk to the batch's
(`rider_gains`); the output layer starts at zero, so an unimproved net *is* the
anchor. It learns from the riders' *measured* FTP tests only (`measured_train_data`):
interpolated days share a test's noise across a whole interval.

Every athlete gets personal weights: a population network fitted on the chunk's
riders, fine-tuned per rider with an L2 pull towards it (see
`veloready_pipeline.models.net_tuning`), all riders of a chunk trained together; per
rider the validation tests decide between the population net and the fine-tune
(``params["source"]``). The exported module takes *raw* features and returns watts:
the normalisation statistics (training rows only) and the rider's gain are buffers
inside it, so the phone needs no extra pre-processing.

Gate metrics are on FTP in watts on the untouched test part's *measured* FTP tests
(interpolated days are training proxies only, see `features_nets`), next to the
baseline "FTP stays at the last test" on the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from veloready_pipeline.config import Family, TrainingConfig
from veloready_pipeline.features_nets import (
    FEATURE_NAMES_ZONES,
    LABEL_NAMES_ZONES,
    LABEL_SHARES_ZONES,
    ZONE_ANCHOR_FEATURE,
    ZONE_LOAD_CHANGE_FEATURE,
    ZONE_LOAD_LEVEL_FEATURE,
    ZONE_POWER_FEATURES,
    NetDataset,
    estimate_ftp_test_noise_pct,
)
from veloready_pipeline.gates import regression_metrics
from veloready_pipeline.models.net_layers import (
    BatchedMLP,
    LoadAnchor,
    PlainMLP,
    anchored_features,
    anchored_output,
    anchored_target,
)
from veloready_pipeline.models.net_tuning import (
    FamilyResult,
    NetFamily,
    TrainData,
    train_net_family,
)

FAMILY: Family = "zones"
N_HIDDEN_LAYERS = 3


class ZoneMLP(PlainMLP):
    """Raw features -> [FTP, Z2 ceiling, Z4 floor, VO2max] in watts.

    Three ReLU hidden layers of ``hidden`` units. The network works *relative to the
    last tested FTP* (the ``anchor`` input): best powers enter as shares of it, and
    the output is the relative change of each label from ``anchor x share`` (see
    `net_layers.anchored_features`). So "FTP stays at the last test" is the zero output
    the network starts near, and one shape of network serves riders of any size.
    ``forward_normalized`` is the bare network (training); ``forward`` wraps it with
    the stored transform and statistics and is what gets exported.
    """

    gain: torch.Tensor
    shares: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, n_in: int = len(FEATURE_NAMES_ZONES), hidden: int = 32,
                 n_out: int = len(LABEL_NAMES_ZONES),
                 anchor_index: int | None = ZONE_ANCHOR_FEATURE,
                 n_ratio: int = len(ZONE_POWER_FEATURES),
                 load_index: tuple[int, int] | None = (ZONE_LOAD_CHANGE_FEATURE,
                                                       ZONE_LOAD_LEVEL_FEATURE)) -> None:
        super().__init__()
        self.init_kwargs = {"n_in": n_in, "hidden": hidden, "n_out": n_out,
                            "anchor_index": anchor_index, "n_ratio": n_ratio,
                            "load_index": load_index}
        self.anchor_index = anchor_index
        self.n_ratio = n_ratio
        self.load_index = tuple(load_index) if load_index is not None else None
        # The rider's FTP gain on a relative change of smoothed CTL (see `rider_gains`);
        # 0 = the plain last test. A buffer: exported with the weights.
        self.register_buffer("gain", torch.zeros(1))
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(N_HIDDEN_LAYERS):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        head = nn.Linear(width, n_out)
        # Start at the anchor: a fresh net outputs zero change (plus the pooled mean
        # residual), so an early-stopped fit that never beat its start is the anchor
        # itself, never a random perturbation of it.
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        layers.append(head)
        self.net = nn.Sequential(*layers)
        shares = LABEL_SHARES_ZONES if n_out == len(LABEL_SHARES_ZONES) else (1.0,) * n_out
        self.register_buffer("shares", torch.tensor(shares, dtype=torch.float32))
        self.register_buffer("x_mean", torch.zeros(n_in))
        self.register_buffer("x_std", torch.ones(n_in))
        self.register_buffer("y_mean", torch.zeros(n_out))
        self.register_buffer("y_std", torch.ones(n_out))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return anchored_features(x, self.anchor_index, self.n_ratio)

    def _load(self) -> LoadAnchor:
        if self.load_index is None:
            return None
        return (self.load_index[0], self.load_index[1], self.gain)

    def target(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return anchored_target(x, y, self.anchor_index, self.shares, self._load())

    def normalize_x(self, x: torch.Tensor) -> torch.Tensor:
        return (self.features(x) - self.x_mean) / self.x_std

    def normalize_y(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.target(x, y) - self.y_mean) / self.y_std

    def forward_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        return self.net(xn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.forward_normalized(self.normalize_x(x)) * self.y_std + self.y_mean
        return anchored_output(x, r, self.anchor_index, self.shares, self._load())


def make_zone_mlp(params: Mapping[str, Any], n_in: int, n_out: int) -> ZoneMLP:
    """A fresh ZoneMLP for one trial's parameters."""
    return ZoneMLP(n_in=n_in, hidden=int(params.get("hidden", 32)), n_out=n_out)


# Population net: stronger weight decay than the LSTM's - FTP changes are a few watts
# in label noise of about the same size, and a smooth prior generalises better.
ZONE_FAMILY = NetFamily(FAMILY, make_zone_mlp, BatchedMLP, "mse", len(LABEL_NAMES_ZONES),
                        pooled_stats=True, population_lr=3e-3, population_weight_decay=1e-2)


def predict_zones(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """Watts ``[n, 4]`` for raw feature rows (float64 out for metrics)."""
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(X, dtype=np.float32)))
    return out.double().numpy()


def evaluate_zone_model(ds: NetDataset, model: nn.Module) -> tuple[dict[str, float],
                                                                   dict[str, float], np.ndarray]:
    """Test metrics on FTP (W) and the last-test baseline on exactly the same rows.

    The test rows of a zone dataset are the measured FTP tests of the test part only
    (`features_nets.make_zone_dataset`): the model is scored on what the app observes,
    never on interpolated labels, which share the previous test's noise with the
    baseline. Every test row is measured, so the former ``*_measured`` duplicates are
    gone; ``n_measured`` (= rows scored) stays so a reader sees how many tests a
    rider's gate rests on.

    Returns:
        (metrics, baselines, predictions ``[n_test, 4]``). Metrics: ``rmse``, ``mae``,
        ``r2`` on FTP, ``rmse_<label>`` for the other three outputs, ``n_measured``.
        Baselines ``last_test_rmse`` / ``last_test_mae`` use the most recent test
        before each scored test.
    """
    te = ds.test_idx
    pred = predict_zones(model, ds.X[te])
    y = ds.y[te, 0].astype(float)
    base = ds.baseline[te].astype(float)
    metrics = regression_metrics(y, pred[:, 0])
    for k, name in enumerate(LABEL_NAMES_ZONES[1:], start=1):
        metrics[f"rmse_{name}"] = regression_metrics(ds.y[te, k], pred[:, k])["rmse"]
    metrics["n_measured"] = float(ds.measured[te].sum())
    b = regression_metrics(y, base)
    baselines = {"last_test_rmse": b["rmse"], "last_test_mae": b["mae"],
                 "last_test_ftp_w": float(base.mean())}
    return metrics, baselines, pred


def pooled_zone_metrics(results: Iterable[Any], datasets: Iterable[NetDataset],
                        noise_pct: float | None = None) -> dict[str, float]:
    """The batch-level inputs of the zone gate (`gates.zone_verdict`).

    ``pooled_mae`` / ``pooled_last_test_mae``: FTP MAE (W) of the models and of "FTP
    stays at the last test" over every scored test of the batch's trained riders
    (``pooled_n_tests``). ``ftp_test_noise_pct``: the configured test noise, or, when
    unset, `features_nets.estimate_ftp_test_noise_pct` over the batch's training
    parts (``ftp_test_noise_triples`` says how many test triples it rests on).

    ``results`` carry ``status``, ``test_y``, ``test_pred`` and ``test_baseline``
    (`FamilyResult` or `ModelResult` with ``extra["baseline_score"]``).
    """
    err: list[np.ndarray] = []
    base_err: list[np.ndarray] = []
    for r in results:
        if r.status != "trained" or r.test_pred is None:
            continue
        base = r.test_baseline if hasattr(r, "test_baseline") else r.extra["baseline_score"]
        y = np.asarray(r.test_y, dtype=float)[:, 0]
        err.append(np.abs(np.asarray(r.test_pred, dtype=float)[:, 0] - y))
        base_err.append(np.abs(np.asarray(base, dtype=float) - y))
    out: dict[str, float] = {"pooled_n_tests": float(sum(len(e) for e in err))}
    if err:
        out["pooled_mae"] = float(np.concatenate(err).mean())
        out["pooled_last_test_mae"] = float(np.concatenate(base_err).mean())
    else:
        out["pooled_mae"] = out["pooled_last_test_mae"] = float("nan")
    if noise_pct is None:
        noise, triples = estimate_ftp_test_noise_pct(datasets)
        out["ftp_test_noise_pct"] = noise
        out["ftp_test_noise_triples"] = float(triples)
    else:
        out["ftp_test_noise_pct"] = float(noise_pct)
    return out


def _load_change(X: np.ndarray) -> np.ndarray:
    """Relative change of smoothed CTL since the last test (the anchor's input)."""
    change = X[:, ZONE_LOAD_CHANGE_FEATURE].astype(float)
    return change / np.maximum(X[:, ZONE_LOAD_LEVEL_FEATURE].astype(float) - change, 1.0)


# Gains are estimated from tests at least this many days into the rider's labelled
# history: CTL starts from the first two weeks' mean TSS (`seeded_training_load`) and
# carries that seed's error with weight (1 - 1/42)^t (0.24 after 60 days), which
# early tests would read as load change. Compared on bench/zones_ceiling.py's seeds
# (anchor alone, 10 seeds): 0 days 327/447 riders, 30 332, 42 336, 60 343.
GAIN_BURN_IN_DAYS = 60
# Fewest measured validation tests for a personal fine-tune to be chosen over the
# population network (a 180-day history has one or two).
MIN_PERSONAL_VAL_TESTS = 3


def rider_gains(batch: Sequence[NetDataset]) -> tuple[np.ndarray, dict[str, float]]:
    """Each rider's FTP gain on load, from their own training-part tests, shrunk to
    the batch's population gain (empirical Bayes).

    On every measured training test at least `GAIN_BURN_IN_DAYS` into the history:
    ``x`` = relative change of smoothed CTL since the previous test, ``y`` = test /
    previous test - 1. Population gain ``G`` = least squares through the origin over
    all riders; residual variance ``s2`` around it. Between-rider variance ``t2``: the
    DerSimonian-Laird moment estimate over the riders' raw gains ``sum xy / sum x^2``
    with precisions ``sum x^2 / s2`` (floored at 0). Each rider:
    ``(sum xy + L G) / (sum x^2 + L)`` with ``L = s2 / t2`` (infinite when t2 = 0:
    everyone gets ``G``), clipped to [0, 1] (fitness never lowers FTP). Uses the
    training parts only; no simulator parameter.
    """
    sxy, sxx, xs, ys = [], [], [], []
    for ds in batch:
        m = ds.train_idx[ds.measured[ds.train_idx]]
        if GAIN_BURN_IN_DAYS and len(m):
            m = m[(ds.dates[m] - ds.dates[0]).astype(int) >= GAIN_BURN_IN_DAYS]
        x = _load_change(ds.X[m])
        y = ds.y[m, 0].astype(float) / ds.baseline[m].astype(float) - 1.0
        sxy.append(float(x @ y))
        sxx.append(float(x @ x))
        xs.append(x)
        ys.append(y)
    sxy_a, sxx_a = np.array(sxy), np.array(sxx)
    total = float(sxx_a.sum())
    g_pop = float(sxy_a.sum() / total) if total > 0 else 0.0
    x_all, y_all = np.concatenate(xs), np.concatenate(ys)
    s2 = float(np.mean((y_all - g_pop * x_all) ** 2)) if len(x_all) else 0.0
    has = sxx_a > 0
    t2 = 0.0
    if has.sum() >= 2 and s2 > 0:
        # DerSimonian-Laird: each raw gain weighted by its precision sum x^2 / s2, so a
        # rider whose load barely moved (a wild raw gain) counts for little.
        raw = sxy_a[has] / sxx_a[has]
        w = sxx_a[has] / s2
        q = float(np.sum(w * (raw - g_pop) ** 2))
        t2 = max((q - (len(w) - 1)) / float(w.sum() - np.sum(w**2) / w.sum()), 0.0)
    lam = s2 / t2 if t2 > 0 else math.inf
    gains = (np.full(len(batch), g_pop) if math.isinf(lam)
             else (sxy_a + lam * g_pop) / (sxx_a + lam))
    info = {"load_gain_population": g_pop, "load_gain_shrinkage": lam,
            "load_gain_between_sd": math.sqrt(t2)}
    return np.clip(gains, 0.0, 1.0), info


def measured_train_data(batch: Sequence[NetDataset]) -> list[TrainData]:
    """What a zone net learns from: each rider's *measured* FTP tests only.

    Training rows are the training part's measured tests (an interpolated day shares a
    test's noise with its neighbours, so 30 of them weigh like one test and teach the
    net the interpolation); validation rows are the validation part's measured tests
    (its last row is always one: the validation/test cut is a test day). A rider
    without a measured training test keeps their last training row. Each rider's
    module gets their own load gain (`rider_gains`) as its ``gain`` buffer. Riders with
    fewer than `MIN_PERSONAL_VAL_TESTS` validation tests keep the population network:
    picking a fine-tune's epoch on one or two noisy tests fits their noise.
    """
    gains, _ = rider_gains(batch)
    out = []
    for ds, g in zip(batch, gains, strict=True):
        tr = ds.train_idx[ds.measured[ds.train_idx]]
        va = ds.val_idx[ds.measured[ds.val_idx]]
        tr = tr if len(tr) else ds.train_idx[-1:]
        va = va if len(va) else ds.val_idx[-1:]
        out.append(TrainData(ds.athlete_id, ds.X[tr], ds.y[tr], ds.X[va], ds.y[va],
                             buffers={"gain": np.array([g], dtype=np.float32)},
                             personal=len(va) >= MIN_PERSONAL_VAL_TESTS))
    return out


def train_zone_models(
    datasets: Mapping[str, NetDataset],
    config: TrainingConfig,
    warm_starts: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, FamilyResult]:
    """Tune, train and evaluate every athlete's zone net, in batches of athletes.

    Athletes whose dataset carries a ``skip_reason`` (too few FTP tests / labelled
    days) get a ``skipped`` result and the app's rule-based zones. The rest are split
    into batches of ``config.execution.chunk_size`` and trained together.

    Args:
        datasets: athlete id -> split dataset from `features_nets.make_zone_dataset`.
        config: the family's training section (seed, tuning, space, epochs, execution
            threads), from `families.base.ModelFamily.training_config`.
        warm_starts: athlete id -> last week's best params (enqueued as first trials).
    """
    results = train_net_family(ZONE_FAMILY, datasets, config, warm_starts,
                               evaluate_zone_model, prepare=measured_train_data)
    for r in results.values():
        if isinstance(r.model, ZoneMLP):  # every trained zone model is one
            r.params["load_gain"] = float(r.model.gain.item())
            r.extra["model_kind"] = r.params["source"]  # the summary's population | personal
    return results
