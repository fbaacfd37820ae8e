"""Injury LSTMs: the hand-written batched LSTM equals nn.LSTM, risk categories, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veloready_pipeline.config import GateThresholds, TrainingConfig, load_settings
from veloready_pipeline.features_nets import FEATURE_NAMES_INJURY, make_injury_dataset
from veloready_pipeline.gates import injury_verdict
from veloready_pipeline.models.injury import (
    InjuryLSTM,
    brier,
    count_onsets,
    pooled_injury_metrics,
    predict_risk,
    risk_category,
    safe_auroc,
    train_injury_models,
)
from veloready_pipeline.models.net_fit import FitConfig, fit_batched, fit_single
from veloready_pipeline.models.net_layers import (
    BatchedLSTM,
    LSTMSequence,
    LSTMWorkspace,
    pad_stack,
)
from veloready_pipeline.models.net_tuning import FamilyResult
from veloready_pipeline.simulate import simulate_athletes

N_FEAT = len(FEATURE_NAMES_INJURY)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _plains(k: int, hidden: int = 6, n_feat: int = N_FEAT) -> list[InjuryLSTM]:
    out = []
    for i in range(k):
        torch.manual_seed(i)
        m = InjuryLSTM(n_feat, hidden)
        with torch.no_grad():
            m.x_mean.copy_(torch.randn(n_feat))
            m.x_std.copy_(torch.rand(n_feat) + 0.5)
        out.append(m)
    return out


def test_lstm_kernel_gradients_match_autograd() -> None:
    torch.manual_seed(0)
    a, t, n, h, f = 2, 4, 3, 3, 2
    x = torch.randn(t, a, f, n, dtype=torch.float64)
    w_ih = torch.randn(a, 4 * h, f, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(a, 4 * h, h, dtype=torch.float64, requires_grad=True)
    b = torch.randn(a, 4 * h, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda wi, wh, bb: LSTMSequence.apply(x, wi, wh, bb, None), (w_ih, w_hh, b)
    )


def test_batched_lstm_equals_unstacked_nn_lstm() -> None:
    plains = _plains(3)
    batched = BatchedLSTM(plains)
    x = torch.randn(3, 9, 14, N_FEAT) * 2 + 1
    with torch.no_grad():
        risk_b = batched(x)
        logit_b = batched.forward_normalized(batched.normalize_x(x))
    for i in range(3):
        single = batched.unstack(i)
        assert isinstance(single.lstm, torch.nn.LSTM) and not single.training
        with torch.no_grad():
            logit_s = single.forward_normalized(single.normalize_x(x[i]))
            risk_s = single(x[i])
            risk_orig = plains[i](x[i])
        assert torch.max(torch.abs(logit_b[i] - logit_s)) < 1e-5
        assert torch.max(torch.abs(risk_b[i] - risk_s)) < 1e-4  # 0-100 scale
        assert torch.max(torch.abs(risk_s - risk_orig)) < 1e-4


def test_workspace_reuse_is_detected() -> None:
    plains = _plains(2)
    batched = BatchedLSTM(plains)
    x = batched.prepare(torch.randn(2, 5, 14, N_FEAT))
    first = batched.forward_prepared(x).sum()
    batched.forward_prepared(x)  # reuses the same buffers
    with pytest.raises(RuntimeError, match="reused"):
        first.backward()
    assert isinstance(batched.workspace, LSTMWorkspace)


def test_batched_lstm_fit_matches_naive_fit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 14, N_FEAT)).astype(np.float32)
    y = (x[:, -1, 0] + 0.5 * rng.normal(size=60) > 1.0).astype(np.float32)
    cfg = FitConfig(lr=0.01, weight_decay=0.0, max_epochs=30, patience=30, eval_every=5,
                    loss="bce", prior_strength=0.1)
    model = BatchedLSTM(_plains(1))
    out = fit_batched(model, pad_stack([x[:45]], [y[:45]]), pad_stack([x[45:]], [y[45:]]), cfg)
    _, val, epoch = fit_single(_plains(1)[0], x[:45], y[:45], x[45:], y[45:], cfg)
    assert val == pytest.approx(float(out.best_val[0]), rel=1e-3)
    assert epoch == int(out.best_epoch[0])


def test_dropping_stopped_athletes_changes_no_lstm_fit(monkeypatch) -> None:
    # The LSTM side of the batch compaction: a new module (own workspace) of the
    # athletes still training, their AdamW moments carried over; same fits as without.
    from veloready_pipeline.models import net_fit, net_layers

    # A kernel check on random inputs, 11 wide: with the full input list (34) the
    # 60 epochs at lr 0.03 amplify the different summation order of the smaller
    # batch to ~6e-5 relative - float rounding, not a different fit.
    n_feat = 11
    rng = np.random.default_rng(4)
    xs, ys = [], []
    for n in (20, 30, 45, 60):
        x = rng.normal(size=(n, 14, n_feat)).astype(np.float32)
        xs.append(x)
        ys.append((x[:, -1, 0] + 0.5 * rng.normal(size=n) > 0.8).astype(np.float32))
    cut = [int(len(x) * 0.7) for x in xs]
    pairs = list(zip(xs, ys, cut, strict=True))
    train = pad_stack([x[:c] for x, _, c in pairs], [y[:c] for _, y, c in pairs])
    val = pad_stack([x[c:] for x, _, c in pairs], [y[c:] for _, y, c in pairs])
    cfg = FitConfig(lr=0.03, weight_decay=0.0, max_epochs=60, patience=10, eval_every=5,
                    loss="bce", prior_strength=0.05)
    sizes: list[int] = []
    real = net_layers.BatchedModule.select

    def spy(self, idx):
        sizes.append(len(idx))
        sub = real(self, idx)
        assert sub.workspace is not self.workspace
        return sub

    monkeypatch.setattr(net_layers.BatchedModule, "select", spy)
    monkeypatch.setattr(net_fit, "COMPACT_SHARE", 1.0)
    never = fit_batched(BatchedLSTM(_plains(4, n_feat=n_feat)), train, val, cfg)
    monkeypatch.setattr(net_fit, "COMPACT_SHARE", 0.0)
    always = fit_batched(BatchedLSTM(_plains(4, n_feat=n_feat)), train, val, cfg)
    assert sizes and min(sizes) < 4
    np.testing.assert_array_equal(never.best_epoch, always.best_epoch)
    np.testing.assert_allclose(never.best_val, always.best_val, rtol=1e-6)
    for k in never.best_state:
        torch.testing.assert_close(never.best_state[k], always.best_state[k],
                                   rtol=1e-6, atol=1e-7)


def test_minibatch_fit_is_seeded_and_takes_a_step_per_batch() -> None:
    # The population fit's mini-batch mode: each epoch is ceil(rows / batch_rows)
    # optimiser steps over a seeded shuffle; the same seed gives the same weights.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 14, N_FEAT)).astype(np.float32)
    y = (x[:, -1, 0] + 0.5 * rng.normal(size=60) > 1.0).astype(np.float32)
    cfg = FitConfig(lr=0.01, weight_decay=0.0, max_epochs=5, patience=30, eval_every=5,
                    loss="bce")

    def fit(batch_rows: int, seed: int) -> tuple[InjuryLSTM, int]:
        module = _plains(1)[0]
        steps = 0

        def count(*_: object) -> None:
            nonlocal steps
            steps += 1

        module.head.weight.register_hook(count)  # one gradient per optimiser step
        fit_single(module, x[:45], y[:45], x[45:], y[45:], cfg, batch_rows=batch_rows,
                   seed=seed)
        return module, steps

    full, full_steps = fit(0, 0)
    a, a_steps = fit(16, 1)
    b, _ = fit(16, 1)
    c, _ = fit(16, 2)
    assert full_steps == 5 and a_steps == 5 * 3  # 45 rows in batches of 16: 3 a pass
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)
    assert not torch.equal(a.head.weight, full.head.weight)


@pytest.mark.parametrize(
    ("risk", "category"),
    [(0.0, "low"), (49.99, "low"), (50.0, "medium"), (70.0, "medium"), (70.01, "high"),
     (100.0, "high")],
)
def test_risk_category(risk: float, category: str) -> None:
    assert risk_category(risk) == category


@pytest.mark.parametrize("bad", [-1.0, 100.5, float("nan")])
def test_risk_category_rejects_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match="0-100"):
        risk_category(bad)


def test_metric_helpers() -> None:
    assert np.isnan(safe_auroc(np.zeros(5), np.arange(5)))
    assert safe_auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert brier(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0
    assert brier(np.array([0, 1]), np.array([0.5, 0.5])) == 0.25


def test_pooled_metrics_concatenate_test_parts() -> None:
    r1 = FamilyResult("a", "injury", "trained", test_y=np.array([0.0, 1.0]),
                      test_pred=np.array([10.0, 90.0]), test_baseline=np.array([0.0, 2.0]),
                      extra={"train_event_rate": 0.5})
    r2 = FamilyResult("b", "injury", "trained", test_y=np.array([0.0, 0.0]),
                      test_pred=np.array([20.0, 30.0]), test_baseline=np.array([1.0, 0.0]),
                      extra={"train_event_rate": 0.1})
    skipped = FamilyResult("c", "injury", "skipped")
    m = pooled_injury_metrics([r1, r2, skipped])
    assert m["pooled_auroc"] == 1.0 and m["pooled_n_rows"] == 4
    assert m["pooled_positive_label_days"] == 1
    assert m["pooled_n_onsets"] == 1
    assert m["pooled_brier"] == pytest.approx(np.mean([0.01, 0.01, 0.04, 0.09]))
    assert m["pooled_base_rate_brier"] == pytest.approx(np.mean([0.25, 0.25, 0.01, 0.01]))


def test_count_onsets_counts_runs_of_positive_rows() -> None:
    assert count_onsets(np.array([])) == 0
    assert count_onsets(np.zeros(10)) == 0
    assert count_onsets(np.array([1, 1, 1, 0, 0, 1, 1, 0])) == 2
    assert count_onsets(np.array([1.0, 0.0, 0.0, 1.0])) == 2  # a run at either edge counts


GATE = GateThresholds(auroc_min=0.75, min_events=10)
# One athlete with an event in the test part, and a batch where the family ranks well.
OWN = {"brier": 0.05, "auroc": 0.82}
OWN_BASE = {"base_rate_brier": 0.06, "warning_score_auroc": 0.70}
POOLED = {"pooled_auroc": 0.80, "pooled_warning_score_auroc": 0.65, "pooled_n_onsets": 14.0}


def _failed(metrics: dict, baselines: dict, pooled: dict) -> list[str]:
    return [c.name for c in injury_verdict(metrics, baselines, pooled, GATE).failures]


def test_injury_verdict_passes_a_model_better_than_every_baseline() -> None:
    v = injury_verdict(OWN, OWN_BASE, POOLED, GATE)
    assert v.passed, v.reason()
    assert {c.name for c in v.checks} == {
        "beats base_rate_brier", "pooled test events", "pooled auroc",
        "beats pooled warning_score_auroc", "beats own warning_score_auroc"}


@pytest.mark.parametrize(("metrics", "baselines", "pooled", "failed"), [
    # Not better calibrated than the athlete's own base rate (a tie is not better).
    ({**OWN, "brier": 0.07}, OWN_BASE, POOLED, ["beats base_rate_brier"]),
    ({**OWN, "brier": 0.06}, OWN_BASE, POOLED, ["beats base_rate_brier"]),
    # Too few events in the batch's test parts for any AUROC to be evidence.
    (OWN, OWN_BASE, {**POOLED, "pooled_n_onsets": 9.0}, ["pooled test events"]),
    # The family does not rank well enough, or no better than the rule.
    (OWN, OWN_BASE, {**POOLED, "pooled_auroc": 0.74}, ["pooled auroc"]),
    (OWN, OWN_BASE, {**POOLED, "pooled_warning_score_auroc": 0.80},
     ["beats pooled warning_score_auroc"]),
    # The athlete's own event is ranked no better than the warning-sign score ranks it.
    ({**OWN, "auroc": 0.70}, OWN_BASE, POOLED, ["beats own warning_score_auroc"]),
    # Anything missing or NaN fails, it never passes by default.
    ({}, {}, {}, ["beats base_rate_brier", "pooled test events", "pooled auroc",
                  "beats pooled warning_score_auroc"]),
    ({**OWN, "auroc": float("nan")}, OWN_BASE, POOLED, ["beats own warning_score_auroc"]),
])
def test_injury_verdict_fails_a_model_not_better_than_a_baseline(
        metrics: dict, baselines: dict, pooled: dict, failed: list[str]) -> None:
    assert _failed(metrics, baselines, pooled) == failed


def test_injury_verdict_without_an_own_test_event_rests_on_calibration_and_the_batch() -> None:
    no_event = {"brier": 0.002, "auroc": float("nan")}
    base = {"base_rate_brier": 0.003, "warning_score_auroc": float("nan")}
    v = injury_verdict(no_event, base, POOLED, GATE)
    assert v.passed, v.reason()
    assert "beats own warning_score_auroc" not in {c.name for c in v.checks}
    # ... and it still fails when its own days are not better calibrated.
    assert not injury_verdict({**no_event, "brier": 0.004}, base, POOLED, GATE).passed


def test_injury_verdict_perfect_own_ranking_passes_a_perfect_rule() -> None:
    assert injury_verdict({**OWN, "auroc": 1.0}, {**OWN_BASE, "warning_score_auroc": 1.0},
                          POOLED, GATE).passed


def test_injury_verdict_default_gate_is_strict() -> None:
    gate = load_settings().gates["injury"]
    assert gate.auroc_min == 0.75 and gate.min_events == 10 and gate.must_beat_baselines


@pytest.fixture(scope="module")
def injury_results() -> tuple[dict, dict]:
    sim = simulate_athletes(4, 160, seed=5)
    datasets = {aid: make_injury_dataset(f) for aid, f in sim.frame.groupby("athlete_id")}
    settings = load_settings(seed=3, tuning={"n_trials": 2, "injury_max_epochs": 15,
                                             "population_max_epochs": 20,
                                             "net_patience": 10, "net_eval_every": 5})
    with torch.random.fork_rng():
        results = train_injury_models(datasets,
                                      TrainingConfig.from_settings(settings, "injury"))
    return datasets, results


def test_train_injury_models_end_to_end(injury_results: tuple[dict, dict]) -> None:
    datasets, results = injury_results
    assert set(results) == set(datasets)
    for aid, r in results.items():
        ds = datasets[aid]
        assert r.status == "trained", r.reason
        assert isinstance(r.model, InjuryLSTM)
        assert r.test_pred.shape == (len(ds.test_idx),)
        assert np.all((r.test_pred >= 0) & (r.test_pred <= 100))
        np.testing.assert_allclose(predict_risk(r.model, ds.X[ds.test_idx]), r.test_pred)
        assert {"auroc", "brier", "n_test_events", "n_test_onsets"} <= set(r.metrics)
        assert {"warning_score_auroc", "base_rate_brier"} == set(r.baselines)
        assert 0 <= r.metrics["brier"] <= 1
        assert r.extra["batch"]["population_fits"] >= 1
        # Population or personal fine-tune, picked on validation (best epoch 0 = the
        # population weights scored best there), named in the params MLflow logs.
        expected = "population" if r.params["best_epoch"] == 0 else "fine-tune"
        assert r.params["adaptation"] == r.extra["adaptation"] == expected
    pooled = pooled_injury_metrics(results.values())
    assert pooled["pooled_n_rows"] == sum(len(d.test_idx) for d in datasets.values())
