"""The model-family table: unknown names fail loudly, and a fourth family added by one
module (`tests/toy_family.py`) and one registration line goes through the whole
lifecycle: train -> gate -> register (MLflow SQLite) -> export (Core ML + ONNX) ->
signed OTA manifest, verified as the app verifies it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from toy_family import TOY, SleepLinearFamily

from veloready_pipeline import training
from veloready_pipeline.config import ConfigError, load_settings
from veloready_pipeline.families import FAMILIES, UnknownFamilyError
from veloready_pipeline.simulate import simulate_athletes


@pytest.fixture
def toy_family() -> Iterator[SleepLinearFamily]:
    """The toy family registered for one test only."""
    FAMILIES.register(TOY)  # the one registration line a new family needs
    try:
        yield TOY
    finally:
        FAMILIES.unregister(TOY.name)


def _athletes():
    sim = simulate_athletes(n_athletes=3, days=150, seed=5, profile="easy")
    return sim.frame, sorted(sim.frame["athlete_id"].unique())


def test_unknown_family_fails_loudly_naming_the_known_ones() -> None:
    assert "toy_sleep" not in FAMILIES
    with pytest.raises(UnknownFamilyError, match=r"'toy_sleep'; known: recovery, zones, injury"):
        FAMILIES.get("toy_sleep")
    frame, ids = _athletes()
    with pytest.raises(UnknownFamilyError, match="unknown model family 'toy_sleep'"):
        training.train_family("toy_sleep", frame, ids, load_settings())
    with pytest.raises(ConfigError, match=r"^families\[0\] = 'toy_sleep' \(argument\): "
                                          r"unknown family 'toy_sleep'; known: recovery"):
        load_settings(families=["toy_sleep"])
    with pytest.raises(ConfigError, match=r"^unknown key gates\.toy_sleep \(argument\)"):
        load_settings(gates={"toy_sleep": {"rmse_max": 1.0}})
    with pytest.raises(UnknownFamilyError, match=r"^families: unknown model family 'x'"):
        FAMILIES.check(["recovery", "x"])


def test_every_model_kind_is_one_the_registry_saves_and_loads() -> None:
    from veloready_pipeline.families import MODEL_KINDS
    from veloready_pipeline.lifecycle.registry import PIP_REQUIREMENTS

    assert set(PIP_REQUIREMENTS) == set(MODEL_KINDS)
    assert {f.model_kind for f in FAMILIES} <= set(MODEL_KINDS)

    class Sklearn(SleepLinearFamily):
        name = "toy_sklearn"
        model_kind = "sklearn"

    with pytest.raises(ValueError, match="model kind 'sklearn' is not one the registry"):
        FAMILIES.register(Sklearn())
    assert "toy_sklearn" not in FAMILIES


def test_a_registered_family_brings_its_settings_defaults(toy_family) -> None:
    assert FAMILIES.names() == ("recovery", "zones", "injury", "toy_sleep")
    s = load_settings()
    assert s.families == ["recovery", "zones", "injury", "toy_sleep"]
    assert s.gates["toy_sleep"] == toy_family.default_gates
    # YAML/env semantics as for the built-in families: field by field, null = off.
    s = load_settings(gates={"toy_sleep": {"mae_max": None}})
    assert (s.gates["toy_sleep"].rmse_max, s.gates["toy_sleep"].mae_max) == (30.0, None)
    assert s.gates["recovery"] == FAMILIES.get("recovery").default_gates
    with pytest.raises(ConfigError, match="unknown toy_sleep hyper-parameter"):
        load_settings(tuning={"spaces": {"toy_sleep": {"params": {"depth": [1, 2]}}}})
    with pytest.raises(ValueError, match="already registered"):
        FAMILIES.register(toy_family)


def test_unregistered_family_leaves_no_trace(toy_family) -> None:
    FAMILIES.unregister(toy_family.name)
    try:
        assert FAMILIES.names() == ("recovery", "zones", "injury")
        assert load_settings().families == ["recovery", "zones", "injury"]
    finally:
        FAMILIES.register(toy_family)  # the fixture unregisters it again


def test_toy_family_gate_refuses_an_impossibly_tight_threshold(toy_family) -> None:
    frame, ids = _athletes()
    tight = load_settings(families=["toy_sleep"], gates={"toy_sleep": {"rmse_max": 1e-6}})
    results = training.train_family("toy_sleep", frame, ids, tight)
    assert [r.status for r in results] == ["trained"] * 3
    assert not any(r.passed for r in results)
    assert all("rmse" in r.reason and r.reason.startswith("failed") for r in results)


def test_toy_family_train_gate_register_export_and_sign(toy_family, veloready_home: Path
                                                        ) -> None:
    from veloready_pipeline.export.ota import load_public_key, public_key_path, verify_path
    from veloready_pipeline.lifecycle.publish import export_registered, publish_manifests
    from veloready_pipeline.lifecycle.registry import register_results
    from veloready_pipeline.lifecycle.review import shippable
    from veloready_pipeline.plots import model_svg

    settings = load_settings(families=["toy_sleep"],
                             export={"quantizations": ["linear8"], "max_size_ratio": 1.0})
    frame, ids = _athletes()
    results = training.train_family("toy_sleep", frame, ids, settings)
    passed = [r for r in results if r.passed]
    assert passed and len(passed) < len(results)  # the gate lets some through, not all

    outcomes = register_results(results, settings, data_hash="toy", lineage={"source": "test"},
                                score_fn=training.score_model, plot_fn=model_svg,
                                workdir=veloready_home / "plots")
    registered = {o.athlete_id: o for o in outcomes if o.version is not None}
    assert set(registered) == {r.athlete_id for r in passed}
    assert all(o.registered_name.startswith("veloready-toy_sleep-") and o.champion
               for o in registered.values())

    exports = export_registered(results, shippable(outcomes), settings)
    for aid in registered:
        rec = exports[(aid, "toy_sleep")]
        assert "error" not in rec, rec
        assert rec["shipped"] in ("float32", "linear8")
        assert {"float32", "linear8", "onnx"} <= set(rec["artifacts"])
        assert all(Path(a["path"]).exists() for a in rec["artifacts"].values())
        assert rec["variants"][rec["shipped"]]["passed"]

    manifests = publish_manifests(outcomes, settings)
    assert set(manifests) == set(registered)
    key = load_public_key(public_key_path(settings.resolve(settings.paths.signing_key)))
    reports = verify_path(settings.resolve(settings.paths.ota_dir), key)  # raises if bad
    assert len(reports) == len(registered)
    for report in reports:
        body = json.loads(report.manifest.read_text())
        version = registered[body["athlete_id"]].version
        rec = exports[(body["athlete_id"], "toy_sleep")]
        # The shipped Core ML package and the ONNX file of the champion version.
        assert sorted((m["family"], m["kind"], m["variant"], m["registry_version"])
                      for m in body["models"]) == sorted(
            ("toy_sleep", rec["artifacts"][v]["kind"], rec["artifacts"][v]["variant"], version)
            for v in (rec["shipped"], "onnx"))
        assert body["models"][0]["output_names"] == ["recovery_tomorrow"]
