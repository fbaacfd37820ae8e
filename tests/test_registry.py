"""The registry against a real MLflow SQLite store in a temporary folder."""

import copy

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from helpers_data import toy_athlete
from veloready_pipeline.config import TrainingConfig, load_settings
from veloready_pipeline.lifecycle.registry import register_results
from veloready_pipeline.lifecycle.store import CHAMPION, registered_name
from veloready_pipeline.models.recovery import train_recovery_model
from veloready_pipeline.plots import model_svg
from veloready_pipeline.training import score_model


@pytest.fixture
def settings(veloready_home):
    return load_settings(tuning={"n_trials": 4})


@pytest.fixture(scope="module")
def good_result():
    return train_recovery_model(toy_athlete("r1", n=140, seed=3, noise=2.0),
                                TrainingConfig.from_settings(
                                    load_settings(tuning={"n_trials": 4}), "recovery"))


def _register(results, settings, tmp_path, digest="d1"):
    return register_results(results, settings, data_hash=digest, lineage={"source": "test"},
                            score_fn=score_model, plot_fn=model_svg, workdir=tmp_path)


def test_first_passing_model_becomes_champion_and_rerun_is_idempotent(settings, good_result,
                                                                     tmp_path):
    assert good_result.passed, good_result.reason
    (out,) = _register([good_result], settings, tmp_path)
    assert out.version == "1" and out.champion
    client = MlflowClient(settings.mlflow_tracking_uri())
    name = registered_name(settings, "recovery", "r1")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    run = client.get_run(out.run_id)
    assert run.data.tags["gate_passed"] == "true"
    assert run.data.tags["data_start"] and run.data.metrics["rmse"] == pytest.approx(
        good_result.metrics["rmse"])
    assert "baseline_persistence_rmse" in run.data.metrics
    assert any(a.path.startswith("residuals-") for a in client.list_artifacts(out.run_id))

    (again,) = _register([good_result], settings, tmp_path)
    assert again.reused and again.version == "1" and again.champion
    assert len(client.search_model_versions(f"name = '{name}'")) == 1


def test_champion_moves_only_when_beaten_on_same_test_data(settings, good_result, tmp_path):
    _register([good_result], settings, tmp_path)
    name = registered_name(settings, "recovery", "r1")
    client = MlflowClient(settings.mlflow_tracking_uri())

    # A worse model (still passing its own gate) trained on shifted data.
    worse = copy.copy(good_result)
    worse.params = dict(good_result.params, variant="worse")
    worse.model = train_recovery_model(toy_athlete("r1", n=140, seed=99, noise=6.0),
                                       TrainingConfig.from_settings(
                                           load_settings(tuning={"n_trials": 2}),
                                           "recovery")).model
    (o2,) = _register([worse], settings, tmp_path, digest="d2")
    assert o2.version == "2" and not o2.champion
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert "champion kept" in client.get_model_version(name, "2").tags["champion_decision"]

    better = copy.copy(good_result)
    better.params = dict(good_result.params, variant="better")
    better.model = good_result.model
    better.test_y = good_result.test_y
    # Same test rows: a model equal to the champion does not beat it (ties keep champion).
    (o3,) = _register([better], settings, tmp_path, digest="d3")
    assert not o3.champion


def test_failed_gate_is_logged_but_never_registered(settings, tmp_path):
    df = toy_athlete("r2", n=140, seed=4)
    df["recovery_score"] = np.random.default_rng(1).uniform(0, 100, len(df))
    bad = train_recovery_model(df, TrainingConfig.from_settings(settings, "recovery"))
    assert not bad.passed
    (out,) = _register([bad], settings, tmp_path)
    assert out.version is None and out.run_id
    client = MlflowClient(settings.mlflow_tracking_uri())
    assert client.get_run(out.run_id).data.tags["gate_passed"] == "false"
    assert client.search_model_versions(
        f"name = '{registered_name(settings, 'recovery', 'r2')}'") == []


def _as_athlete(result, athlete_id):
    other = copy.copy(result)
    other.athlete_id = athlete_id
    return other


def test_known_runs_carry_a_weeks_runs_from_chunk_to_chunk(settings, good_result, tmp_path,
                                                           monkeypatch):
    """Chunked registration reads only the runs logged since its previous read, still
    sees another writer's runs, and a re-run of a chunk reuses its runs."""
    from veloready_pipeline.lifecycle import registry

    read: list[int] = []
    real = registry._existing_runs

    def counting(client, data_hash=None, since_ms=None, unfinished=None):
        found = real(client, data_hash, since_ms, unfinished)
        read.append(len(found))
        return found

    monkeypatch.setattr(registry, "_existing_runs", counting)
    monkeypatch.setattr(registry.KnownRuns, "MARGIN_MS", 0)  # one clock: no skew margin

    def reg(athletes, known=None):
        return register_results([_as_athlete(good_result, a) for a in athletes], settings,
                                data_hash="wk", lineage={}, score_fn=score_model,
                                plot_fn=None, workdir=tmp_path, known_runs=known)

    known = registry.KnownRuns("wk")
    first = reg(["a0", "a1", "a2"], known)           # reads 0 runs, logs 3
    (other,) = reg(["a4"])                           # another writer: reads 3, logs a4
    second = reg(["a4", "a5"], known)                # reads a0-a2 + a4 (new since read 1)
    assert second[0].reused and second[0].run_id == other.run_id
    assert not second[1].reused and second[1].version == "1"
    again = reg(["a0", "a1", "a2"], known)           # reads a5 only
    assert [o.run_id for o in again] == [o.run_id for o in first]
    assert all(o.reused and o.version == "1" for o in again)
    fresh = reg(["a5"], registry.KnownRuns("wk"))    # a new flow run: reads all 5
    assert fresh[0].reused and fresh[0].run_id == second[1].run_id
    assert read == [0, 3, 4, 1, 5]
    client = MlflowClient(settings.mlflow_tracking_uri())
    exp = client.get_experiment_by_name(registry.EXPERIMENT)
    assert len(client.search_runs([exp.experiment_id])) == 5  # no duplicate anywhere
    with pytest.raises(ValueError, match="data hash 'wk'"):
        register_results([good_result], settings, data_hash="other", lineage={},
                         score_fn=score_model, known_runs=known)
