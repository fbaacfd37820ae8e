"""Staged rollout, promotion and rollback against a real MLflow store and real exports."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import mlflow
from helpers_data import toy_athlete
from veloready_pipeline.cli import app
from veloready_pipeline.config import TrainingConfig, load_settings
from veloready_pipeline.export.ota import verify_path
from veloready_pipeline.lifecycle.manifests import device_bucket, in_rollout
from veloready_pipeline.lifecycle.publish import export_registered, publish_manifests
from veloready_pipeline.lifecycle.registry import register_results
from veloready_pipeline.lifecycle.review import ReviewDecision, apply_decision, pending_challengers
from veloready_pipeline.lifecycle.rollout import RolloutError, promote_rollout, rollback_champion
from veloready_pipeline.lifecycle.store import CHAMPION, champion_state, registered_name
from veloready_pipeline.models.recovery import train_recovery_model
from veloready_pipeline.training import score_model

ATHLETE = "ro1"
_PREFIX = itertools.count()


def _client(settings):
    """A client on this test's store for runs *and* models (MLflow's registry URI is a
    process-wide setting that an earlier test may have pointed elsewhere)."""

    uri = settings.mlflow_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# ----------------------------------------------------------------------- bucketing


def test_bucketing_is_stable_and_roughly_proportional():
    devices = [f"device-{i:05d}" for i in range(20_000)]
    assert [device_bucket(d, "a1", "recovery") for d in devices[:50]] == [
        device_bucket(d, "a1", "recovery") for d in devices[:50]]
    for percent in (1, 10, 50, 90):
        share = sum(in_rollout(d, "a1", "recovery", percent) for d in devices) / len(devices)
        assert abs(share - percent / 100) < 0.012, (percent, share)
    assert not any(in_rollout(d, "a1", "recovery", 0) for d in devices[:200])
    assert all(in_rollout(d, "a1", "recovery", 100) for d in devices[:200])
    # Another athlete or family draws another 10 %: overlap is about 10 % of 10 %.
    a = {d for d in devices if in_rollout(d, "a1", "recovery", 10)}
    b = {d for d in devices if in_rollout(d, "a1", "injury", 10)}
    assert len(a & b) / len(a) < 0.2


@given(st.text(min_size=1, max_size=40), st.integers(0, 99), st.integers(0, 100))
def test_widening_a_rollout_never_drops_a_device(device, low, extra):
    high = min(100, low + extra)
    if in_rollout(device, "a", "recovery", low):
        assert in_rollout(device, "a", "recovery", high)


@pytest.mark.parametrize("percent", [-1, 101])
def test_bucketing_rejects_impossible_percentages(percent):
    with pytest.raises(ValueError, match="0..100"):
        in_rollout("d", "a", "recovery", percent)


# ----------------------------------------------------------------- registry + manifests


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_root": (root / "artifacts").as_uri()}


@pytest.fixture(scope="module")
def result():
    r = train_recovery_model(toy_athlete(ATHLETE, n=140, seed=3, noise=2.0),
                             TrainingConfig.from_settings(
                                 load_settings(tuning={"n_trials": 3}), "recovery"))
    assert r.passed, r.reason
    return r


@pytest.fixture
def settings(veloready_home, store, monkeypatch):
    prefix = f"ro{next(_PREFIX)}"
    # The CLI reads the same settings from the environment.
    monkeypatch.setenv("VELOREADY_TRACKING_URI", store["tracking_uri"])
    monkeypatch.setenv("VELOREADY_ARTIFACT_ROOT", store["artifact_root"])
    monkeypatch.setenv("VELOREADY_REGISTRY_PREFIX", prefix)
    return load_settings(tuning={"n_trials": 3}, review_mode="manual", registry_prefix=prefix,
                         **store)


def _ship_new_version(settings, result, digest, reviewer="alice"):
    """Register a version (manual mode), approve it, export it, publish the manifest."""
    outcomes = register_results([result], settings,
                                data_hash=f"{settings.registry_prefix}-{digest}",
                                lineage={"source": "test"}, score_fn=score_model)
    apply_decision(settings, ReviewDecision("approve_all", [], "ok", reviewer),
                   pending_challengers(settings), source="cli")
    for o in outcomes:
        o.champion_version = o.version
    exports = export_registered([result], outcomes, settings)
    assert "error" not in exports[(ATHLETE, "recovery")], exports
    return Path(publish_manifests(outcomes, settings)[ATHLETE])


def _manifest(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _family_models(manifest, role):
    return sorted((m["registry_version"], m["kind"], m["sha256"]) for m in manifest["models"]
                  if m["family"] == "recovery" and m["role"] == role)


def _register_never_passed(settings, result):
    """A version whose run recorded a failed gate (e.g. registered by hand)."""
    name = registered_name(settings, "recovery", ATHLETE)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    with mlflow.start_run(tags={"gate_passed": "false", "gate_verdict": "failed: r2 0.1 <= 0.7",
                                "athlete_id": ATHLETE, "family": "recovery"}) as run:
        info = mlflow.xgboost.log_model(result.model, name="model")
    return str(mlflow.register_model(info.model_uri, name).version), run.info.run_id


def _ship_first_version(settings, result) -> tuple[Path, list]:
    """v1 shipped at 10 % (staged, no previous, rule-based fallback) with Core ML + ONNX."""
    first = _ship_new_version(settings, result, "w1")
    verify_path(first)
    m1 = _manifest(first)
    assert m1["rollout"]["recovery"]["champion_version"] == "1"
    assert m1["rollout"]["recovery"]["percent"] == 10
    assert m1["rollout"]["recovery"]["channel"] == "staged"
    assert m1["rollout"]["recovery"]["previous_version"] is None
    assert m1["fallback"]["kind"] == "rule_based"
    v1_models = _family_models(m1, "champion")
    assert [v for v, _, _ in v1_models] == ["1", "1"]  # Core ML + ONNX
    return first, v1_models


def _widen_first_and_refuse_replay(runner: CliRunner, first: Path) -> None:
    """Widen v1 to 100 % from the CLI; the old 10 % manifest put back is refused."""
    assert runner.invoke(app, ["ota", "verify", str(first.parent.parent)]).exit_code == 0
    staged = {p: p.read_bytes() for p in (first, first.with_name("manifest.json.sig"))}
    res = runner.invoke(app, ["ota", "promote", ATHLETE, "recovery", "--percent", "100"])
    assert res.exit_code == 0, res.output
    assert "10 % -> 100 %" in res.output and "sequence 2" in res.output
    assert _manifest(first)["rollout"]["recovery"]["channel"] == "stable"
    # Replay: the 10 % manifest and its valid signature put back after the promotion.
    promoted = {p: p.read_bytes() for p in staged}
    for p, data in staged.items():
        p.write_bytes(data)
    res = runner.invoke(app, ["ota", "verify", str(first.parent.parent)])
    assert res.exit_code == 1, res.output
    assert "sequence 1 is older than the last issued sequence 2" in res.output
    for p, data in promoted.items():
        p.write_bytes(data)


def _ship_second_version_and_widen(settings, result, first: Path, v1_models: list) -> Path:
    """v2 at 10 % with v1 as the fallback, then widened (re-signed) to 100 %."""
    better = copy.copy(result)
    better.params = dict(result.params, variant="v2")
    second = _ship_new_version(settings, better, "w2", reviewer="bob")
    assert second == first
    before_promote = second.read_bytes()
    m2 = _manifest(second)
    block = m2["rollout"]["recovery"]
    assert (block["champion_version"], block["percent"], block["previous_version"]) == (
        "2", 10, "1")
    assert _family_models(m2, "previous") == v1_models
    verify_path(second)

    # Widening re-signs: a different, still valid manifest.
    out = promote_rollout(settings, ATHLETE, "recovery", 100, actor="carol", reason="fine")
    assert out["from_percent"] == 10 and out["channel"] == "stable"
    assert second.read_bytes() != before_promote
    verify_path(second)
    assert _manifest(second)["rollout"]["recovery"]["percent"] == 100
    with pytest.raises(RolloutError, match="only widens"):
        promote_rollout(settings, ATHLETE, "recovery", 50, actor="carol")
    return second


def _refuse_bad_rollbacks(settings, result, runner: CliRunner, client, name: str) -> None:
    """Refusals before any rollback: missing version, never-passed version, no reason."""
    with pytest.raises(RolloutError, match="version 99 does not exist"):
        rollback_champion(settings, ATHLETE, "recovery", reason="x", actor="d", to_version="99")
    bad, _ = _register_never_passed(settings, result)
    res = runner.invoke(app, ["registry", "rollback", ATHLETE, "recovery", "--to", bad,
                              "--reason", "try"])
    assert res.exit_code == 1 and "never passed its gate" in res.output, res.output
    with pytest.raises(RolloutError, match="needs a reason"):
        rollback_champion(settings, ATHLETE, "recovery", reason=" ", actor="d")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "2"


def _roll_back_to_first(settings, runner: CliRunner, client, name: str, second: Path,
                        v1_models: list) -> dict:
    """The rollback restores v1 and its files, for every device, and records why."""
    res = runner.invoke(app, ["registry", "rollback", ATHLETE, "recovery",
                              "--reason", "complaints from riders", "--by", "dave"])
    assert res.exit_code == 0, res.output
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    m3 = _manifest(second)
    verify_path(second)
    assert _family_models(m3, "champion") == v1_models
    assert m3["rollout"]["recovery"] | {"set_at": None} == m3["rollout"]["recovery"] | {
        "champion_version": "1", "percent": 100, "channel": "rollback",
        "previous_version": None, "set_by": "rollback", "set_at": None}
    t1 = client.get_model_version(name, "1").tags
    t2 = client.get_model_version(name, "2").tags
    assert t1["champion_set_by"] == "rollback" and t1["champion_set_actor"] == "dave"
    assert t1["rolled_back_from"] == "2"
    assert t2["rolled_back"] == "true" and t2["rolled_back_reason"] == "complaints from riders"
    assert t2["rolled_back_to"] == "1"
    state = champion_state(client, settings, ATHLETE, "recovery")
    assert state.version == "1" and state.percent == 100
    return m3


def _refuse_second_rollback(runner: CliRunner, client, name: str, second: Path) -> None:
    """Rolling back twice is refused, from the CLI too, and changes nothing."""
    manifest_bytes = second.read_bytes()
    res = runner.invoke(app, ["registry", "rollback", ATHLETE, "recovery", "--to", "2",
                              "--reason", "again"])
    assert res.exit_code == 1 and "refusing to roll back twice" in res.output, res.output
    assert second.read_bytes() == manifest_bytes
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"


def _tampered_byte_is_caught(runner: CliRunner, second: Path, m3: dict) -> None:
    """A tampered byte is still caught after all this re-signing."""
    res = runner.invoke(app, ["ota", "verify", str(second)])
    assert res.exit_code == 0, res.output
    model = second.parent.parent / next(m["file"] for m in m3["models"])
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    assert runner.invoke(app, ["ota", "verify", str(second)]).exit_code == 1


@pytest.mark.slow  # real Core ML + ONNX exports of two versions, ~20-45 s
def test_staged_rollout_promote_and_rollback(settings, result):
    first, v1_models = _ship_first_version(settings, result)
    # Widen v1 to 100 %, then ship v2 at 10 % with v1 as the fallback.
    runner = CliRunner()
    _widen_first_and_refuse_replay(runner, first)
    second = _ship_second_version_and_widen(settings, result, first, v1_models)
    client = _client(settings)
    name = registered_name(settings, "recovery", ATHLETE)
    _refuse_bad_rollbacks(settings, result, runner, client, name)
    m3 = _roll_back_to_first(settings, runner, client, name, second, v1_models)
    _refuse_second_rollback(runner, client, name, second)
    _tampered_byte_is_caught(runner, second, m3)


def test_rollback_without_champion_or_previous_is_refused(settings, result):
    with pytest.raises(RolloutError, match="no registered model"):
        rollback_champion(settings, ATHLETE, "recovery", reason="x", actor="a")
    _ship_new_version(settings, result, "only")
    with pytest.raises(RolloutError, match="no previous champion"):
        rollback_champion(settings, ATHLETE, "recovery", reason="x", actor="a")
    with pytest.raises(RolloutError, match="already the champion"):
        rollback_champion(settings, ATHLETE, "recovery", reason="x", actor="a", to_version="1")
    with pytest.raises(RolloutError, match="1..100"):
        promote_rollout(settings, ATHLETE, "recovery", 0, actor="a")


def test_publish_renews_a_due_manifest_of_an_athlete_outside_the_run(settings, result,
                                                                     monkeypatch):
    import datetime as dt

    from veloready_pipeline.export import ota

    path = _ship_new_version(settings, result, "renew")
    first = _manifest(path)
    t0 = dt.datetime.fromisoformat(first["issued_at"].replace("Z", "+00:00"))
    before = path.read_bytes()
    # A week later, a run that does not include the athlete: nothing is rewritten.
    monkeypatch.setattr(ota, "_now", lambda: t0 + dt.timedelta(days=7))
    assert publish_manifests([], settings) == {}
    assert path.read_bytes() == before
    # Past half the validity: the champion's manifest is renewed from the registry.
    monkeypatch.setattr(ota, "_now", lambda: t0 + dt.timedelta(days=16))
    assert publish_manifests([], settings) == {ATHLETE: str(path)}
    renewed = _manifest(path)
    assert renewed["sequence"] == first["sequence"] + 1
    assert renewed["models"] == first["models"]
    assert renewed["expires_at"] == ota._iso(t0 + dt.timedelta(days=46))
