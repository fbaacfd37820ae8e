"""Challenger review against a real MLflow SQLite store: aliases, decisions, tags."""

from __future__ import annotations

import copy
import itertools

import pytest
from mlflow.tracking import MlflowClient

from helpers_data import toy_athlete
from veloready_pipeline.config import TrainingConfig, load_settings
from veloready_pipeline.lifecycle.registry import register_results
from veloready_pipeline.lifecycle.review import (
    ReviewDecision,
    ReviewError,
    apply_decision,
    challengers_of,
    check_listed,
    pending_challengers,
    refresh_outcomes,
    review_markdown,
    shippable,
)
from veloready_pipeline.lifecycle.store import CHALLENGER, CHAMPION, registered_name
from veloready_pipeline.models.recovery import train_recovery_model
from veloready_pipeline.training import score_model


@pytest.fixture(scope="module")
def results():
    s = load_settings(tuning={"n_trials": 3})
    config = TrainingConfig.from_settings(s, "recovery")
    out = {aid: train_recovery_model(toy_athlete(aid, n=140, seed=seed, noise=2.0), config)
           for aid, seed in (("r1", 3), ("r2", 7))}
    assert all(r.passed for r in out.values()), [r.reason for r in out.values()]
    return out


_PREFIX = itertools.count()


def _client(settings):
    """A client on this test's store for runs *and* models (MLflow's registry URI is a
    process-wide setting that an earlier test may have pointed elsewhere)."""

    uri = settings.mlflow_tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating one costs seconds); tests differ by prefix."""
    root = tmp_path_factory.mktemp("mlflow")
    return {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_root": (root / "artifacts").as_uri()}


@pytest.fixture
def prefix():
    return f"rv{next(_PREFIX)}"


def _settings(mode: str, store, prefix):
    return load_settings(tuning={"n_trials": 3}, review_mode=mode, registry_prefix=prefix,
                         **store)


def _register(results, settings, digest="d1"):
    # The fingerprint ignores the registry prefix: a per-test digest keeps tests apart.
    return register_results(results, settings, data_hash=f"{settings.registry_prefix}-{digest}",
                            lineage={"source": "test"}, score_fn=score_model)


def _alias(client, name, alias):
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception:  # noqa: BLE001 - missing alias
        return None


def test_manual_mode_leaves_challenger_pending_until_approved(veloready_home, results, store,
                                                              prefix):
    settings = _settings("manual", store, prefix)
    outcomes = _register(list(results.values()), settings)
    client = _client(settings)
    for o in outcomes:
        assert o.version == "1" and not o.champion and o.review_decision == "pending"
        assert o.decision.startswith("pending review: first passing version")
        assert _alias(client, o.registered_name, CHALLENGER) == "1"
        assert _alias(client, o.registered_name, CHAMPION) is None
    pending = pending_challengers(settings)
    assert [(c.athlete_id, c.family, c.version) for c in pending] == [
        ("r1", "recovery", "1"), ("r2", "recovery", "1")]
    assert pending[0].metrics["rmse"] == pytest.approx(results["r1"].metrics["rmse"], abs=1e-4)
    assert pending[0].baselines["persistence_rmse"] == pytest.approx(
        results["r1"].baselines["persistence_rmse"])
    assert [c.athlete_id for c in challengers_of(outcomes, settings)] == ["r1", "r2"]

    decision = ReviewDecision("approve_listed", ["r1"], "looks good", "alice").validate()
    applied = apply_decision(settings, decision, pending, source="cli")
    assert [(a.athlete_id, a.verdict) for a in applied] == [("r1", "approved"), ("r2", "pending")]
    n1 = registered_name(settings, "recovery", "r1")
    n2 = registered_name(settings, "recovery", "r2")
    assert _alias(client, n1, CHAMPION) == "1" and _alias(client, n1, CHALLENGER) is None
    assert _alias(client, n2, CHAMPION) is None and _alias(client, n2, CHALLENGER) == "1"
    tags = client.get_model_version(n1, "1").tags
    assert tags["review_decision"] == "approved" and tags["reviewer"] == "alice"
    assert tags["reason"] == "looks good" and tags["review_source"] == "cli"
    assert tags["reviewed_at"].startswith("20")
    assert tags["champion_set_by"] == "review" and tags["rollout_percent"] == "10"
    assert tags["rollout_channel"] == "staged" and tags["previous_champion_version"] == ""
    assert "review_decision" not in client.get_model_version(n2, "1").tags

    fresh = refresh_outcomes(outcomes, settings)
    by = {o.athlete_id: o for o in fresh}
    assert by["r1"].champion and by["r1"].review_decision == "approved"
    assert not by["r2"].champion and by["r2"].review_decision == "pending"
    assert [o.athlete_id for o in pending_challengers(settings)] == ["r2"]


def test_rejection_needs_a_reason_and_is_recorded_once(veloready_home, results, store, prefix):
    settings = _settings("manual", store, prefix)
    _register([results["r1"]], settings)
    pending = pending_challengers(settings)
    with pytest.raises(ReviewError, match="reason"):
        ReviewDecision("reject", ["r1"], "", "bob").validate()
    decision = ReviewDecision("reject", ["r1"], "residuals drift at weekends", "bob")
    (applied,) = apply_decision(settings, decision, pending, source="prefect-ui")
    assert applied.verdict == "rejected" and applied.champion_version is None
    client = _client(settings)
    name = registered_name(settings, "recovery", "r1")
    tags = client.get_model_version(name, "1").tags
    assert tags["review_decision"] == "rejected" and tags["reviewer"] == "bob"
    assert tags["reason"] == "residuals drift at weekends"
    assert _alias(client, name, CHALLENGER) is None and _alias(client, name, CHAMPION) is None
    # The same decision again changes nothing: the challenger was already decided.
    (again,) = apply_decision(settings, decision, pending, source="cli")
    assert again.verdict == "skipped"
    assert pending_challengers(settings) == []
    outcomes = refresh_outcomes(
        [type("O", (), {"athlete_id": "r1", "registered_name": name, "version": "1",
                        "champion": False, "champion_version": None,
                        "review_decision": "", "decision": ""})()], settings)
    assert shippable(outcomes) == []


def test_auto_mode_tags_every_decision_and_keeps_the_champion_rule(veloready_home, results,
                                                                   store, prefix):
    settings = _settings("auto", store, prefix)
    (first,) = _register([results["r1"]], settings)
    client = _client(settings)
    name = registered_name(settings, "recovery", "r1")
    assert first.champion and first.review_decision == "auto_promoted"
    tags = client.get_model_version(name, "1").tags
    assert tags["review_decision"] == "auto_promoted" and tags["reviewer"] == "auto"
    assert tags["champion_set_by"] == "auto" and tags["reason"].startswith("first passing")
    assert _alias(client, name, CHALLENGER) is None

    worse = copy.copy(results["r1"])
    worse.params = dict(results["r1"].params, variant="worse")
    worse.model = results["r2"].model  # another athlete's model: worse on r1's test rows
    (second,) = _register([worse], settings, digest="d2")
    assert second.version == "2" and not second.champion
    assert second.review_decision == "auto_kept"
    tags2 = client.get_model_version(name, "2").tags
    assert tags2["review_decision"] == "auto_kept" and "champion kept" in tags2["reason"]
    assert _alias(client, name, CHAMPION) == "1" and _alias(client, name, CHALLENGER) is None
    assert pending_challengers(settings) == []


def test_auto_mode_writes_a_versions_tags_with_the_version(veloready_home, results, store,
                                                            prefix, monkeypatch):
    # Lineage, champion comparison, decision and rollout tags travel in
    # create_model_version: no single-tag write per registered model.
    settings = _settings("auto", store, prefix)
    calls: list[str] = []
    real = MlflowClient.set_model_version_tag

    def spy(self, *args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("key", "?"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", spy)
    (first,) = _register([results["r1"]], settings)
    assert calls == []
    tags = _client(settings).get_model_version(first.registered_name, "1").tags
    for key in ("fingerprint", "run_id", "champion_decision", "new_loss_same_test",
                "review_decision", "reviewed_at", "champion_set_by", "rollout_percent"):
        assert tags.get(key), key


def test_auto_mode_supersedes_a_challenger_left_pending_by_a_manual_run(
        veloready_home, results, store, prefix):
    manual = _settings("manual", store, prefix)
    (pending,) = _register([results["r1"]], manual)
    client = _client(manual)
    name = pending.registered_name
    assert _alias(client, name, CHALLENGER) == "1" and _alias(client, name, CHAMPION) is None
    newer = copy.copy(results["r1"])
    newer.params = dict(results["r1"].params, variant="newer")
    (decided,) = _register([newer], _settings("auto", store, prefix), digest="d2")
    assert decided.version == "2" and decided.champion
    assert _alias(client, name, CHAMPION) == "2" and _alias(client, name, CHALLENGER) is None


@pytest.mark.parametrize(
    ("decision", "athletes", "reason", "reviewer", "match"),
    [
        ("approve", [], "", "a", "must be one of"),
        ("approve_listed", [], "", "a", "at least one athlete"),
        ("reject", ["x"], " ", "a", "reason"),
        ("approve_all", [], "", "", "reviewer"),
    ],
)
def test_invalid_decisions_are_refused(decision, athletes, reason, reviewer, match):
    with pytest.raises(ReviewError, match=match):
        ReviewDecision(decision, athletes, reason, reviewer).validate()


def test_verdicts_per_decision_kind():
    assert ReviewDecision("approve_all").verdict_for("x") == "approved"
    listed = ReviewDecision("approve_listed", ["a"])
    assert listed.verdict_for("a") == "approved" and listed.verdict_for("b") is None
    assert ReviewDecision("reject", [], "r").verdict_for("b") == "rejected"
    some = ReviewDecision("reject", ["a"], "r")
    assert some.verdict_for("a") == "rejected" and some.verdict_for("b") is None


def test_listed_athletes_must_be_pending_and_markdown_shows_both_sides(veloready_home, results,
                                                                       store, prefix):
    settings = _settings("auto", store, prefix)
    _register([results["r1"]], settings)  # champion v1 (auto)
    manual = _settings("manual", store, prefix)
    better = copy.copy(results["r1"])
    better.params = dict(results["r1"].params, variant="again")
    _register([better], manual, digest="d2")  # pending v2 vs champion v1
    pending = pending_challengers(manual)
    assert [(c.version, c.champion_version) for c in pending] == [("2", "1")]
    assert pending[0].champion_metrics["rmse"] == pytest.approx(
        results["r1"].metrics["rmse"], abs=1e-4)
    assert pending[0].champion_loss_same_test is not None
    md = review_markdown(pending, flow_run_id="run-1", timeout_s=60)
    assert "| r1 | recovery | v2 |" in md and "| v1 |" in md and "run-1" in md
    assert "does not beat champion v1" in md  # an equal model never beats the champion
    with pytest.raises(ReviewError, match="nobody"):
        check_listed(ReviewDecision("approve_listed", ["nobody"], "", "x"), pending)
    check_listed(ReviewDecision("approve_listed", ["r1"], "", "x"), pending)
    # Approving it anyway (reviewer's call) moves champion and records the previous one.
    apply_decision(manual, ReviewDecision("approve_all", [], "", "carol"), pending,
                   source="cli")
    client = _client(manual)
    name = registered_name(manual, "recovery", "r1")
    assert _alias(client, name, CHAMPION) == "2"
    assert client.get_model_version(name, "2").tags["previous_champion_version"] == "1"


def test_cli_review_without_a_paused_run_records_decisions(veloready_home, results, store,
                                                          prefix, monkeypatch):
    from typer.testing import CliRunner

    from veloready_pipeline.cli import app

    settings = _settings("manual", store, prefix)
    _register(list(results.values()), settings)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no server: nothing to resume
    for key, value in (("TRACKING_URI", store["tracking_uri"]),
                       ("ARTIFACT_ROOT", store["artifact_root"]),
                       ("REGISTRY_PREFIX", prefix), ("REVIEW_MODE", "manual")):
        monkeypatch.setenv(f"VELOREADY_{key}", value)
    runner = CliRunner()
    listing = runner.invoke(app, ["registry", "review"])
    assert listing.exit_code == 0, listing.output
    assert "2 challenger(s) pending review" in listing.output
    assert "r1" in listing.output and "no champion (app uses rules)" in listing.output

    res = runner.invoke(app, ["registry", "review", "--reject", "r2", "--reviewer", "eve"])
    assert res.exit_code == 2 and "a rejection needs a reason" in res.output
    res = runner.invoke(app, ["registry", "review", "--approve-all", "--approve", "r1"])
    assert res.exit_code == 2 and "not both" in res.output

    res = runner.invoke(app, ["registry", "review", "--reject", "r2", "--reason", "too new",
                              "--reviewer", "eve"])
    assert res.exit_code == 0, res.output
    assert "r2 recovery v1: rejected" in res.output and "no weekly run is paused" in res.output
    # Approving a version that was never exported cannot ship it: refused, left pending.
    res = runner.invoke(app, ["registry", "review", "--approve", "r1", "--reviewer", "eve"])
    assert res.exit_code == 1 and "has no export" in res.output, res.output
    assert [c.athlete_id for c in pending_challengers(settings)] == ["r1"]
    client = _client(settings)
    tags = client.get_model_version(registered_name(settings, "recovery", "r2"), "1").tags
    assert (tags["review_decision"], tags["reviewer"], tags["reason"]) == (
        "rejected", "eve", "too new")
