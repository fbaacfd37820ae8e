"""Zone nets: batched = unstacked = naive, masking independence, tuning end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from veloready_pipeline.config import GateThresholds, TrainingConfig, load_settings
from veloready_pipeline.features_nets import (
    FEATURE_NAMES_ZONES,
    LABEL_NAMES_ZONES,
    make_zone_dataset,
)
from veloready_pipeline.models.net_fit import FitConfig, fit_batched, fit_single
from veloready_pipeline.models.net_layers import BatchedMLP, normalisation_stats, pad_stack
from veloready_pipeline.models.net_tuning import (
    TrainData,
    attach_stats,
    train_data,
    tune_batched,
)
from veloready_pipeline.models.zones import (
    ZONE_FAMILY,
    ZoneMLP,
    evaluate_zone_model,
    pooled_zone_metrics,
    predict_zones,
    train_zone_models,
)
from veloready_pipeline.simulate import simulate_athletes

N_FEAT = len(FEATURE_NAMES_ZONES)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: extra intra-op threads only spin on a shared 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _raw_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Plausible raw zone rows (positive anchor) and labels that depend on them."""
    x = rng.normal(1.0, 0.2, (n, N_FEAT)).astype(np.float32) * 100
    anchor = rng.uniform(180, 320, n).astype(np.float32)
    x[:, FEATURE_NAMES_ZONES.index("last_test_ftp_w")] = anchor
    ftp = anchor * (1 + 0.0004 * (x[:, 8] - 100))
    y = np.outer(ftp, [1.0, 0.75, 0.91, 1.2]).astype(np.float32)
    return x, y


def _athletes(k: int, seed: int = 0, n_min: int = 20, n_max: int = 40) -> list[TrainData]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        x, y = _raw_rows(rng, int(rng.integers(n_min, n_max)))
        cut = int(len(x) * 0.8)
        out.append(TrainData(f"a{i}", x[:cut], y[:cut], x[cut:], y[cut:]))
    attach_stats(ZONE_FAMILY, out)
    return out


def _plain(seed: int, data: TrainData, hidden: int = 8) -> ZoneMLP:
    torch.manual_seed(seed)
    m = ZoneMLP(N_FEAT, hidden)
    with torch.no_grad():
        for k, v in data.stats.items():
            getattr(m, k).copy_(torch.from_numpy(v))
    return m


def test_batched_and_unstacked_predictions_agree() -> None:
    athletes = _athletes(3)
    plains = [_plain(i, a) for i, a in enumerate(athletes)]
    batched = BatchedMLP(plains)
    x = torch.from_numpy(np.stack([a.x_train[:15] for a in athletes]))
    with torch.no_grad():
        out_b = batched(x)
        norm_b = batched.forward_normalized(batched.normalize_x(x))
    for i in range(3):
        single = batched.unstack(i)
        assert isinstance(single, ZoneMLP) and not single.training
        with torch.no_grad():
            out_s = single(x[i])
            norm_s = single.forward_normalized(single.normalize_x(x[i]))
        assert torch.max(torch.abs(norm_b[i] - norm_s)) < 1e-5  # network outputs
        assert torch.max(torch.abs(out_b[i] - out_s) / out_s.abs()) < 1e-6  # watts
        # ... and unstacking returns exactly the original athlete's network.
        assert torch.allclose(single(x[i]), plains[i](x[i]), rtol=1e-6)


def test_padding_and_other_athletes_do_not_change_an_athletes_fit() -> None:
    athletes = _athletes(3, seed=1)
    cfg = FitConfig(lr=0.01, weight_decay=0.0, max_epochs=40, patience=40, eval_every=5,
                    loss="mse", prior_strength=0.1)

    def fit(group: list[TrainData]) -> list[torch.Tensor]:
        model = BatchedMLP([_plain(7, a) for a in group])
        train = pad_stack([a.x_train for a in group], [a.y_train for a in group])
        val = pad_stack([a.x_val for a in group], [a.y_val for a in group])
        out = fit_batched(model, train, val, cfg)
        return [out.best_state[k][0] for k in sorted(out.best_state)]

    alone = fit([athletes[0]])
    together = fit([athletes[0], athletes[1], athletes[2]])
    for a, b in zip(alone, together, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_dropping_stopped_athletes_from_the_batch_changes_no_fit(monkeypatch) -> None:
    # Athletes with few rows stop early; the fit then goes on without them (weights,
    # AdamW moments and rows copied into a smaller batch). Every athlete's best
    # snapshot, best epoch and validation loss must equal the fit that never drops.
    from veloready_pipeline.models import net_fit

    athletes = _athletes(6, seed=3, n_min=15, n_max=60)
    cfg = FitConfig(lr=0.02, weight_decay=1e-4, max_epochs=80, patience=10, eval_every=5,
                    loss="mse", prior_strength=0.05)
    compactions: list[int] = []
    real = net_fit._FitBatch.compact

    def spy(self, keep, *args):
        compactions.append(int(keep.sum()))
        return real(self, keep, *args)

    monkeypatch.setattr(net_fit._FitBatch, "compact", spy)

    def fit(share: float):
        monkeypatch.setattr(net_fit, "COMPACT_SHARE", share)
        model = BatchedMLP([_plain(11, a) for a in athletes])
        train = pad_stack([a.x_train for a in athletes], [a.y_train for a in athletes])
        val = pad_stack([a.x_val for a in athletes], [a.y_val for a in athletes])
        return fit_batched(model, train, val, cfg)

    never = fit(1.0)
    assert compactions == []
    always = fit(0.0)  # rebuilds the batch after every check, down to one athlete
    assert len(compactions) >= 3 and min(compactions) < len(athletes)
    assert never.epochs_run == always.epochs_run
    np.testing.assert_array_equal(never.best_epoch, always.best_epoch)
    np.testing.assert_allclose(never.best_val, always.best_val, rtol=1e-6)
    for k in never.best_state:
        torch.testing.assert_close(never.best_state[k], always.best_state[k],
                                   rtol=1e-6, atol=1e-7)


def test_batched_fit_matches_the_naive_single_fit() -> None:
    data = _athletes(1, seed=2, n_min=40, n_max=41)[0]
    cfg = FitConfig(lr=0.01, weight_decay=1e-4, max_epochs=60, patience=20, eval_every=5,
                    loss="mse", prior_strength=0.05)
    model = BatchedMLP([_plain(3, data)])
    out = fit_batched(model, pad_stack([data.x_train], [data.y_train]),
                      pad_stack([data.x_val], [data.y_val]), cfg)
    single, val, epoch = fit_single(_plain(3, data), data.x_train, data.y_train, data.x_val,
                                    data.y_val, cfg)
    assert val == pytest.approx(float(out.best_val[0]), rel=1e-3)
    assert epoch == int(out.best_epoch[0])


def test_pad_stack_pads_with_the_last_row_and_masks_it() -> None:
    x1, x2 = np.ones((2, 3), np.float32), np.full((4, 3), 2.0, np.float32)
    padded = pad_stack([x1, x2], [np.ones((2, 1)), np.ones((4, 1))])
    assert padded.x.shape == (2, 4, 3)
    assert padded.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert torch.all(padded.x[0, 2:] == 1.0)  # finite padding, no division by zero later
    with pytest.raises(ValueError, match="no rows"):
        pad_stack([x1, np.zeros((0, 3), np.float32)], [np.ones((2, 1)), np.zeros((0, 1))])


def test_normalisation_stats_floor_constant_columns() -> None:
    mean, std = normalisation_stats(np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0]]))
    assert mean.tolist() == [2.0, 5.0]
    assert std[0] == pytest.approx(1.0) and std[1] == 1.0


@pytest.fixture(scope="module")
def zone_datasets() -> dict:
    sim = simulate_athletes(6, 200, seed=3)
    return {aid: make_zone_dataset(f) for aid, f in sim.frame.groupby("athlete_id")}


def _settings(**tuning):
    base = {"n_trials": 3, "zones_max_epochs": 40, "population_max_epochs": 60,
            "net_patience": 15, "net_eval_every": 5}
    return load_settings(seed=11, tuning=base | tuning, execution={"chunk_size": 50})


def _config(**tuning):
    return TrainingConfig.from_settings(_settings(**tuning), "zones")


def test_train_zone_models_end_to_end(zone_datasets: dict) -> None:
    results = train_zone_models(zone_datasets, _config())
    assert set(results) == set(zone_datasets)
    trained = [r for r in results.values() if r.status == "trained"]
    skipped = [r for r in results.values() if r.status == "skipped"]
    assert trained, "the simulator's riders should have enough FTP tests"
    assert all(r.reason for r in skipped)
    for r in trained:
        ds = zone_datasets[r.athlete_id]
        assert isinstance(r.model, ZoneMLP)
        assert r.n_test == len(ds.test_idx) and r.test_pred.shape == (r.n_test, 4)
        assert {"rmse", "mae", "r2", "n_measured", "val_loss"} <= set(r.metrics)
        assert {"last_test_rmse", "last_test_mae", "last_test_ftp_w"} == set(r.baselines)
        assert r.feature_names == FEATURE_NAMES_ZONES
        assert r.params["n_trials"] == 3 and "hidden" in r.params
        assert r.params["source"] == ("population" if r.params["best_epoch"] == 0
                                      else "personal")
        assert r.params["load_gain"] == pytest.approx(float(r.model.gain))
        assert r.extra["model_kind"] == r.params["source"]
        # The stored predictions are the exported module's own predictions.
        np.testing.assert_allclose(predict_zones(r.model, ds.X[ds.test_idx]), r.test_pred)
        metrics, baselines, _ = evaluate_zone_model(ds, r.model)
        assert metrics["rmse"] == pytest.approx(r.metrics["rmse"])
        # Predictions are sane watts: within 30 % of the last test.
        ratio = r.test_pred[:, 0] / ds.baseline[ds.test_idx]
        assert np.all((ratio > 0.7) & (ratio < 1.3))


def test_zone_training_is_reproducible_and_seed_dependent(zone_datasets: dict) -> None:
    a = train_zone_models(zone_datasets, _config())
    b = train_zone_models(zone_datasets, _config())
    c = train_zone_models(zone_datasets, TrainingConfig.from_settings(load_settings(
        seed=12, tuning={"n_trials": 3, "zones_max_epochs": 40, "population_max_epochs": 60,
                         "net_patience": 15}), "zones"))
    for aid, ra in a.items():
        if ra.status != "trained":
            continue
        assert ra.metrics["rmse"] == b[aid].metrics["rmse"]
        assert ra.params == b[aid].params
    assert any(a[k].params != c[k].params for k in a if a[k].status == "trained")


def test_grid_sampler_and_per_athlete_pick(zone_datasets: dict, monkeypatch) -> None:
    import veloready_pipeline.models.zones as zones

    # These riders have 1-2 validation tests; allow the fine-tune pick for all of them.
    monkeypatch.setattr(zones, "MIN_PERSONAL_VAL_TESTS", 1)
    config = _config(sampler="grid", grid_points=2, n_trials=4, net_pick="athlete")
    results = train_zone_models(zone_datasets, config)
    trained = [r for r in results.values() if r.status == "trained"]
    assert all(r.params["sampler"] == "grid" for r in trained)
    for r in trained:
        # Per-athlete pick: the chosen trial has the athlete's lowest validation loss.
        vals = r.extra["val_by_trial"]
        assert r.metrics["val_loss"] == pytest.approx(min(vals))


def test_replay_naive_reproduces_the_batched_result(zone_datasets: dict) -> None:
    # The benchmarks' naive reference lives in bench/ (imported as the bench scripts do,
    # with the repository root on sys.path).
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench.naive_reference import replay_naive

    config = _config(n_trials=2)
    ready = [d for d in zone_datasets.values() if not d.skip_reason][:3]
    data = [train_data(d) for d in ready]
    picks, summary = tune_batched(ZONE_FAMILY, data, config, batch_key="t")
    naive, timing = replay_naive(ZONE_FAMILY, [train_data(d) for d in ready], config,
                                 summary["trials"])
    assert timing["loop_seconds"] > 0
    for p, q, ds in zip(picks, naive, ready, strict=True):
        assert p.trial == q.trial
        assert p.val_loss == pytest.approx(q.val_loss, rel=1e-3, abs=1e-4)
        pb = predict_zones(p.model, ds.X[ds.test_idx])
        pn = predict_zones(q.model, ds.X[ds.test_idx])
        assert np.max(np.abs(pb - pn)) < 0.05  # watts


def test_label_names_match_outputs() -> None:
    assert ZoneMLP().net[-1].out_features == len(LABEL_NAMES_ZONES)


def test_warm_start_is_tried_first_and_invalid_values_dropped(zone_datasets: dict) -> None:
    warm = {aid: {"hidden": 80, "lr": 0.001, "prior_strength": 99.0, "trial": 4}
            for aid in zone_datasets}
    results = train_zone_models(zone_datasets, _config(n_trials=2), warm_starts=warm)
    trained = next(r for r in results.values() if r.status == "trained")
    first = trained.extra["batch"]["trials"][0]["params"]
    assert first["hidden"] == 80 and first["lr"] == 0.001
    assert first["prior_strength"] != 99.0  # outside this week's range: sampled instead


def _last_test_net(n_in: int = N_FEAT) -> ZoneMLP:
    """A zone net whose output is exactly "FTP stays at the last test" (zero change)."""
    m = ZoneMLP(n_in, 64)
    with torch.no_grad():
        m.net[-1].weight.zero_()
        m.net[-1].bias.zero_()
    return m.eval()


def test_zone_gate_scores_only_measured_ftp_tests(zone_datasets: dict) -> None:
    ds = next(d for d in zone_datasets.values() if not d.skip_reason)
    te = ds.test_idx
    assert ds.measured[te].all()
    metrics, baselines, pred = evaluate_zone_model(ds, _last_test_net())
    assert metrics["n_measured"] == len(te)
    # The last-test net *is* the baseline, on the same rows.
    np.testing.assert_allclose(pred[:, 0], ds.baseline[te], rtol=1e-5)
    assert metrics["rmse"] == pytest.approx(baselines["last_test_rmse"], rel=1e-4)
    # ... and those rows are measurements: the error is test minus previous test.
    err = ds.baseline[te] - ds.y[te, 0]
    assert baselines["last_test_mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)
    assert not any(k.endswith("_measured") and k != "n_measured" for k in metrics)


def test_quantized_zone_packages_are_at_most_half_the_float_one(tmp_path) -> None:
    """The real export of a zone net at the smallest width the search space can pick:
    both quantized packages at most half the float32 package (wider nets only do
    better, the package's fixed part weighs less)."""
    from veloready_pipeline.config import load_settings
    from veloready_pipeline.export.coreml import export_torch

    widths = load_settings().tuning.spaces["zones"].params["hidden"]
    rng = np.random.default_rng(0)
    x, _ = _raw_rows(rng, 32)
    torch.manual_seed(0)
    m = ZoneMLP(N_FEAT, int(min(widths)))
    with torch.no_grad():
        f = m.features(torch.from_numpy(x))
        m.x_mean.copy_(f.mean(0))
        m.x_std.copy_(f.std(0) + 1e-3)
        m.y_std.fill_(0.02)
    m.eval()
    sample = torch.from_numpy(x)
    arts = export_torch(m, sample[:1], tmp_path, "zones", "features", ["zones"],
                        variants=("float32", "linear8", "palette4"), sample=sample)
    full = arts["float32"].size_bytes
    for variant in ("linear8", "palette4"):
        assert arts[variant].size_bytes <= 0.5 * full, (variant, arts[variant].size_bytes, full)


# ------------------------------------------------------------------ the zone gate

ZGATE = GateThresholds(rmse_max=8.0, mae_max=6.0)
POOLED_OK = {"pooled_mae": 4.0, "pooled_last_test_mae": 5.0, "ftp_test_noise_pct": 1.2}


def _zone_verdict(mae: float, base_mae: float, pooled: dict | None = None,
                  thresholds: GateThresholds = ZGATE):
    from veloready_pipeline.gates import zone_verdict

    return zone_verdict({"rmse": mae, "mae": mae},
                        {"last_test_rmse": base_mae, "last_test_mae": base_mae,
                         "last_test_ftp_w": 250.0}, pooled or POOLED_OK, thresholds)


def test_zone_gate_is_non_inferiority_within_one_test_noise() -> None:
    # Noise 1.2 % of a 250 W last test = 3 W: 4.9 W against a 2 W baseline is inside.
    v = _zone_verdict(4.9, 2.0)
    assert v.passed, v.reason()
    assert "test noise 3.000 W (non-inferiority)" in v.reason()
    # 5.1 W is 0.1 W beyond baseline + noise: fails, naming the check and the margin.
    v = _zone_verdict(5.1, 2.0)
    assert not v.passed
    assert [c.name.split()[0] for c in v.failures] == ["rmse", "mae"]
    assert all(c.margin == pytest.approx(-0.1) for c in v.failures)
    assert "misses by 0.100" in v.reason()
    # The absolute thresholds still hold on their own.
    v = _zone_verdict(6.5, 6.0)
    assert [c.name for c in v.failures] == ["mae"]


def test_zone_gate_pooled_superiority_fails_every_rider_of_the_batch() -> None:
    losing = POOLED_OK | {"pooled_mae": 5.2}
    v = _zone_verdict(1.0, 3.0, losing)  # a rider who individually beats the last test
    assert not v.passed
    assert [c.name for c in v.failures] == ["beats pooled last_test_mae (batch)"]
    assert "model 5.200 does not beat baseline 5.000 (by 0.200)" in v.reason()


def test_zone_gate_without_evidence_fails_and_setting_can_drop_baselines() -> None:
    v = _zone_verdict(1.0, 3.0, POOLED_OK | {"ftp_test_noise_pct": float("nan")})
    assert not v.passed and len(v.failures) == 2  # no noise estimate: no margin, no pass
    assert "test noise unknown" in v.reason()
    off = GateThresholds(rmse_max=8.0, mae_max=6.0, must_beat_baselines=False)
    assert [c.name for c in _zone_verdict(5.5, 1.0, thresholds=off).checks] == ["rmse", "mae"]


def test_pooled_zone_metrics_pool_scored_tests_and_honour_the_setting(zone_datasets) -> None:
    from veloready_pipeline.models.net_tuning import FamilyResult

    a = FamilyResult("a", "zones", "trained", test_y=np.array([[200.0] * 4, [210.0] * 4]),
                     test_pred=np.array([[202.0] * 4, [209.0] * 4]),
                     test_baseline=np.array([195.0, 200.0]))
    b = FamilyResult("b", "zones", "trained", test_y=np.array([[300.0] * 4]),
                     test_pred=np.array([[306.0] * 4]), test_baseline=np.array([301.0]))
    skipped = FamilyResult("c", "zones", "skipped")
    p = pooled_zone_metrics([a, b, skipped], [], noise_pct=1.5)
    assert p["pooled_n_tests"] == 3
    assert p["pooled_mae"] == pytest.approx((2 + 1 + 6) / 3)
    assert p["pooled_last_test_mae"] == pytest.approx((5 + 10 + 1) / 3)
    assert p["ftp_test_noise_pct"] == 1.5
    est = pooled_zone_metrics([a], zone_datasets.values())
    assert np.isfinite(est["ftp_test_noise_pct"]) and est["ftp_test_noise_triples"] >= 8


def test_net_chunk_gates_zones_with_the_batch_pooled_checks() -> None:
    from veloready_pipeline.families import FAMILIES

    zones = FAMILIES.get("zones")
    sim = simulate_athletes(8, 200, seed=3)
    ids = sorted(sim.frame["athlete_id"].unique())
    settings = _settings(n_trials=1)
    results = zones.train_chunk(sim.frame, ids, settings)
    trained = [r for r in results if r.status == "trained"]
    assert trained
    maes = [r.metrics["pooled_mae"] for r in trained]
    assert len(set(maes)) == 1 and np.isfinite(maes[0])
    for r in trained:
        names = [c.name for c in r.verdict.checks]
        assert names[:2] == ["rmse", "mae"] and names[-1] == "beats pooled last_test_mae (batch)"
        assert any("non-inferiority" in n for n in names)
        assert r.metrics["ftp_test_noise_pct"] > 0
        # The export path re-judges with the stored pooled figures: same verdict.
        assert zones.verdict(r, r.metrics, settings).reason() == r.verdict.reason()


# ------------------------------------------- measured rows and the training-load anchor


def test_measured_train_data_uses_only_measured_tests_and_rider_gains(zone_datasets) -> None:
    from veloready_pipeline.models.zones import measured_train_data, rider_gains

    ready = [d for d in zone_datasets.values() if not d.skip_reason]
    data = measured_train_data(ready)
    gains, info = rider_gains(ready)
    for ds, td, g in zip(ready, data, gains, strict=True):
        tr = ds.train_idx[ds.measured[ds.train_idx]]
        va = ds.val_idx[ds.measured[ds.val_idx]]
        assert len(va)  # the validation/test cut is a test day
        tr = tr if len(tr) else ds.train_idx[-1:]  # no measured training test: last row
        np.testing.assert_array_equal(td.x_train, ds.X[tr])
        np.testing.assert_array_equal(td.y_val, ds.y[va])
        assert td.buffers["gain"][0] == pytest.approx(g)
        assert 0.0 <= g <= 1.0
    assert np.isfinite(info["load_gain_population"])


def _gain_batch(gains: list[float], n_tests: int, seed: int = 0):
    """Datasets whose measured training tests follow y = g x + small noise exactly."""
    from veloready_pipeline.features_nets import NetDataset

    rng = np.random.default_rng(seed)
    ci = FEATURE_NAMES_ZONES.index("adapted_ctl_change_since_test")
    li = FEATURE_NAMES_ZONES.index("adapted_ctl")
    out = []
    for k, g in enumerate(gains):
        X = np.ones((n_tests, N_FEAT), np.float32) * 50
        change = rng.uniform(-8, 8, n_tests)
        X[:, ci], X[:, li] = change, 50 + change
        rel = change / 50
        last = np.full(n_tests, 250.0)
        ftp = last * (1 + g * rel + rng.normal(0, 1e-4, n_tests))
        y = np.outer(ftp, [1, 0.75, 0.91, 1.2]).astype(np.float32)
        idx = np.arange(n_tests)
        dates = (np.arange(n_tests) * 10).astype("datetime64[D]")  # a test every 10 days
        out.append(NetDataset(f"g{k}", "zones", X, y, dates,
                              list(FEATURE_NAMES_ZONES), idx, idx[-1:], idx[-1:], last,
                              np.ones(n_tests, bool)))
    return out


def test_rider_gains_recover_own_gains_when_the_evidence_is_clear() -> None:
    from veloready_pipeline.models.zones import GAIN_BURN_IN_DAYS, rider_gains

    truth = [0.1, 0.2, 0.3, 0.4, 0.25, 0.15]
    gains, info = rider_gains(_gain_batch(truth, 18))
    np.testing.assert_allclose(gains, truth, atol=0.03)  # tiny noise: hardly shrunk
    # Riders who all share one gain: shrunk all the way to the population's.
    same, info = rider_gains(_gain_batch([0.2] * 6, 18))
    # Tests in the first GAIN_BURN_IN_DAYS count for nothing: break them, same gains.
    broken = _gain_batch(truth, 18)
    for ds in broken:
        early = (ds.dates - ds.dates[0]).astype(int) < GAIN_BURN_IN_DAYS
        ds.y[early] *= 1.5
    np.testing.assert_allclose(rider_gains(broken)[0], gains)
    assert info["load_gain_population"] == pytest.approx(0.2, abs=0.01)
    np.testing.assert_allclose(same, 0.2, atol=0.01)


def test_zone_net_anchor_is_the_last_test_scaled_by_the_load_change() -> None:
    rng = np.random.default_rng(3)
    x, _ = _raw_rows(rng, 16)
    ci = FEATURE_NAMES_ZONES.index("adapted_ctl_change_since_test")
    li = FEATURE_NAMES_ZONES.index("adapted_ctl")
    x[:, ci] = rng.uniform(-5, 5, 16)
    x[:, li] = 60 + x[:, ci]
    net = _last_test_net()
    last = x[:, FEATURE_NAMES_ZONES.index("last_test_ftp_w")]
    np.testing.assert_allclose(predict_zones(net, x)[:, 0], last, rtol=1e-5)
    net.gain.fill_(0.3)
    expected = last * (1 + 0.3 * x[:, ci] / 60)
    np.testing.assert_allclose(predict_zones(net, x)[:, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(predict_zones(net, x)[:, 2], 0.91 * expected, rtol=1e-5)


def test_riders_without_enough_validation_tests_keep_the_population_net(zone_datasets) -> None:
    from veloready_pipeline.models.zones import measured_train_data

    ready = [d for d in zone_datasets.values() if not d.skip_reason]
    data = measured_train_data(ready)
    for k, d in enumerate(data):
        d.personal = k == 0
    picks, _ = tune_batched(ZONE_FAMILY, data, _config(n_trials=1), batch_key="p")
    shared = [p for p, d in zip(picks, data, strict=True) if not d.personal]
    assert len(shared) >= 2 and all(p.best_epoch == 0 for p in shared)
    ref = shared[0].model.state_dict()
    for p, d in zip(picks[1:], data[1:], strict=True):
        state = p.model.state_dict()
        for name, value in ref.items():
            if name != "gain":
                torch.testing.assert_close(state[name], value)
        assert float(p.model.gain) == pytest.approx(float(d.buffers["gain"][0]))
        assert np.isfinite(p.val_loss)
