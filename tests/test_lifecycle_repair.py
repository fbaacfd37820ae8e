"""Every crash point repairs: a failure at each step of register -> alias -> export -> sign,
then a re-run, leaves what an uninterrupted run leaves.

Two athletes (a plain id and an odd one), two weeks: week 1 registers a weaker model
(v1, champion), week 2 a better one (v2 beats v1 on the same test data). The failure
is injected into week 2 (an exception at the step, or a real SIGKILL of a child
process), week 2 is run again, and the registry (versions, fingerprints, aliases,
decisions), the MLflow runs (status, metrics, params, artifacts), the export records
and the signed manifests are compared with a home where nothing failed.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from lifecycle_helpers import run_week, snapshot

from helpers_data import toy_athlete
from veloready_pipeline.config import TrainingConfig, load_settings
from veloready_pipeline.lifecycle.manifests import lifecycle_status, shipped_in_manifest
from veloready_pipeline.models.recovery import train_recovery_model

ATHLETES = ("r1", "Zoë / ../x")


class Crash(RuntimeError):
    """The injected failure."""


@pytest.fixture(scope="module")
def weeks():
    """(week-1 results, week-2 results): a weaker then a better model per athlete."""
    settings = load_settings(tuning={"n_trials": 3})
    week1, week2 = [], []
    for aid in ATHLETES:
        good = train_recovery_model(toy_athlete(aid, n=140, seed=3, noise=2.0),
                                    TrainingConfig.from_settings(settings, "recovery"))
        assert good.passed, good.reason
        worse = copy.copy(good)
        worse.params = dict(good.params, variant="worse")
        worse.model = train_recovery_model(toy_athlete(aid, n=140, seed=99, noise=6.0),
                                           TrainingConfig.from_settings(
                                               load_settings(tuning={"n_trials": 2}),
                                               "recovery")).model
        week1.append(worse)
        week2.append(good)
    return week1, week2


def _settings(home: Path, monkeypatch, review_mode: str = "auto"):
    monkeypatch.setenv("VELOREADY_HOME", str(home))
    return load_settings(tuning={"n_trials": 3}, review_mode=review_mode)


def _statuses(rows):
    return {(r["athlete_id"], r["family"]): (r["status"], r["registry_version"]) for r in rows}


@pytest.fixture(scope="module")
def reference(weeks, tmp_path_factory):
    """Per review mode: the uninterrupted home's snapshot and week-2 statuses."""
    mp = pytest.MonkeyPatch()
    out = {}
    try:
        for mode in ("auto", "manual"):
            home = tmp_path_factory.mktemp(f"reference-{mode}")
            s = _settings(home, mp, mode)
            run_week(weeks[0], s, home / "plots", "week1")
            rows = run_week(weeks[1], s, home / "plots", "week2")
            out[mode] = (snapshot(s), _statuses(rows), rows)
    finally:
        mp.undo()
    return out


@pytest.mark.slow
def test_uninterrupted_week_is_registered_champion_and_shipped(reference):
    snap, statuses, rows = reference["auto"]
    assert set(statuses.values()) == {("registered", "2")}, rows
    for versions in snap["models"].values():
        # v1 champion first, then v2 beat it: champion v2 with previous v1
        assert [(v, dec, prev, alias) for v, _, dec, prev, alias, _ in versions] == [
            (1, "auto_promoted", "", None), (2, "auto_promoted", "1", "champion")]
    assert {status for (_, status, *_) in snap["runs"]} == {"FINISHED"}
    assert len(snap["manifests"]) == 2 and len(snap["exports"]) == 4
    manual_snap, manual_statuses, _ = reference["manual"]
    assert set(manual_statuses.values()) == {("registered", "2")}  # challengers, exported
    for versions in manual_snap["models"].values():
        assert [alias for *_, alias, _ in versions] == [None, "challenger"]


def _patch_once(monkeypatch, target, name, *, after: bool = False, when=None):
    """Make ``target.name`` fail once (before or after doing its work)."""
    original = getattr(target, name)
    fired = []

    def failing(*args, **kwargs):
        if fired or (when is not None and not when(*args, **kwargs)):
            return original(*args, **kwargs)
        fired.append(True)
        if after:
            original(*args, **kwargs)
        raise Crash(f"injected failure in {name}")

    monkeypatch.setattr(target, name, failing)


def _inject(step: str, monkeypatch) -> None:
    from veloready_pipeline.export import ota
    from veloready_pipeline.lifecycle import publish, registry, store

    if step == "register: model logged, version not created":
        _patch_once(monkeypatch, registry, "_create_version")
    elif step == "register: version created, no alias":
        _patch_once(monkeypatch, registry, "_create_version", after=True)
    elif step == "alias: alias write fails":
        _patch_once(monkeypatch, store._RegistryClient, "set_registered_model_alias")
    elif step == "export: files written, no export record":
        _patch_once(monkeypatch, publish, "atomic_write_text")
    elif step == "sign: nothing published (export without manifest)":
        _patch_once(monkeypatch, publish, "write_manifest")  # the name publish calls
    elif step == "sign: manifest written, signature not":
        _patch_once(monkeypatch, ota, "_atomic_write",
                    when=lambda path, data: Path(path).name == ota.SIGNATURE_NAME)
    else:
        raise AssertionError(step)


STEPS = ["register: model logged, version not created", "register: version created, no alias",
         "alias: alias write fails", "export: files written, no export record",
         "sign: nothing published (export without manifest)",
         "sign: manifest written, signature not"]


# Manual review differs at the alias step only (a challenger alias, exported, not shipped).
CASES = [("auto", step) for step in STEPS] + [("manual", step) for step in STEPS
                                              if step.startswith(("alias", "register: version"))]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "step"), CASES)
def test_failure_at_each_step_is_repaired_by_the_rerun(weeks, reference, tmp_path, monkeypatch,
                                                       step, mode):
    s = _settings(tmp_path, monkeypatch, mode)
    run_week(weeks[0], s, tmp_path / "plots", "week1")
    with monkeypatch.context() as m:
        _inject(step, m)
        with pytest.raises(Crash):
            run_week(weeks[1], s, tmp_path / "plots", "week2")
    rows = run_week(weeks[1], s, tmp_path / "plots", "week2")
    ref_snap, ref_statuses, _ = reference[mode]
    assert _statuses(rows) == ref_statuses, [r["reason"] for r in rows]
    assert snapshot(s) == ref_snap
    if step == "register: version created, no alias":
        (first,) = [r for r in rows if r["athlete_id"] == ATHLETES[0]]  # the one that crashed
        assert first["reason"].startswith("repaired: v2 was registered but a crash left it "
                                          "without its"), first["reason"]


@pytest.mark.slow
def test_kill_9_after_version_created_is_repaired(weeks, reference, tmp_path, monkeypatch):
    """The case of issue 15: a real SIGKILL between version and alias, then a re-run."""
    s = _settings(tmp_path, monkeypatch)
    run_week(weeks[0], s, tmp_path / "plots", "week1")
    pkl = tmp_path / "week2.pkl"
    pkl.write_bytes(pickle.dumps((weeks[1], "week2")))
    import os

    import veloready_pipeline

    here = Path(__file__).parent
    src = str(Path(veloready_pipeline.__file__).parent.parent)  # this checkout's code
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, str(here)]),
                        "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, str(here / "lifecycle_helpers.py"), str(pkl),
                           str(tmp_path / "plots"), "after_version_created"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]
    killed = snapshot(s)
    name = sorted(killed["models"])[0]
    assert killed["models"][name][-1][0] == 2 and killed["models"][name][-1][4] is None
    assert "RUNNING" in {status for (_, status, *_) in killed["runs"]}
    rows = run_week(weeks[1], s, tmp_path / "plots", "week2")
    ref_snap, ref_statuses, _ = reference["auto"]
    assert _statuses(rows) == ref_statuses, [r["reason"] for r in rows]
    assert snapshot(s) == ref_snap


@pytest.mark.slow
def test_stale_interrupted_version_is_withdrawn_not_promoted(weeks, tmp_path, monkeypatch):
    """A version left without alias while the champion moved on is withdrawn, and the
    summary says not_promoted, never registered."""
    from mlflow.tracking import MlflowClient

    from veloready_pipeline.lifecycle.store import CHAMPION, registered_name

    s = _settings(tmp_path, monkeypatch)
    run_week(weeks[0][:1], s, tmp_path / "plots", "week1")
    with monkeypatch.context() as m:
        _inject("register: version created, no alias", m)
        with pytest.raises(Crash):
            run_week(weeks[1][:1], s, tmp_path / "plots", "week2")
    name = registered_name(s, "recovery", ATHLETES[0])
    client = MlflowClient(s.mlflow_tracking_uri(), registry_uri=s.mlflow_tracking_uri())
    # meanwhile a person registers and promotes another version (e.g. by hand)
    v1 = client.get_model_version(name, "1")
    v3 = client.create_model_version(name, v1.source, run_id=v1.run_id)
    client.set_registered_model_alias(name, CHAMPION, v3.version)
    rows = run_week(weeks[1][:1], s, tmp_path / "plots", "week2")
    (row,) = rows
    assert row["status"] == "not_promoted" and row["registry_version"] == "2", row
    assert "interrupted registration of v2 withdrawn: v3 was registered after it" in row["reason"]
    assert client.get_model_version(name, "2").tags["registration_withdrawn"]
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "3"


def _outcome(**kw):
    base = {"version": "2", "champion_version": "2", "challenger": False, "decision": "d",
            "registered_name": "veloready-recovery-r1"}
    return type("O", (), base | kw)()


def test_summary_status_needs_alias_export_and_signed_manifest(tmp_path):
    from veloready_pipeline.export.ota import SIGNATURE_NAME

    manifest = tmp_path / "r1" / "manifest.json"
    manifest.parent.mkdir()
    body = json.dumps({"models": [{"registry_name": "veloready-recovery-r1",
                                   "registry_version": "2", "role": "champion"}]})
    manifest.write_text(body)
    record = {"shipped": "coreml"}
    assert shipped_in_manifest(manifest, "veloready-recovery-r1", "2") == (
        "manifest or signature unreadable (FileNotFoundError: [Errno 2] No such file or "
        f"directory: '{manifest.with_name(SIGNATURE_NAME)}')")
    assert lifecycle_status(_outcome(), record, str(manifest))[0] == "unshipped"
    import hashlib

    sig = manifest.with_name(SIGNATURE_NAME)
    sig.write_text(json.dumps({"manifest_sha256": hashlib.sha256(b"old").hexdigest()}))
    status, why = lifecycle_status(_outcome(), record, str(manifest))
    assert status == "unshipped" and "signature was made for other bytes" in why
    sig.write_text(json.dumps({"manifest_sha256": hashlib.sha256(body.encode()).hexdigest()}))
    assert lifecycle_status(_outcome(), record, str(manifest)) == ("registered", "d")
    assert lifecycle_status(_outcome(version="3"), record, str(manifest))[0] == "not_promoted"
    assert lifecycle_status(_outcome(), None, str(manifest))[0] == "unshipped"
    assert lifecycle_status(_outcome(), {"error": "boom"}, str(manifest))[0] == "unshipped"
    assert lifecycle_status(_outcome(), record, None)[0] == "unshipped"
    challenger = _outcome(champion_version="1", challenger=True)
    assert lifecycle_status(challenger, record, None)[0] == "registered"
    assert lifecycle_status(challenger, None, None)[0] == "unshipped"
