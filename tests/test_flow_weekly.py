"""The weekly training flow end to end: Prefect (test harness), MLflow, GX, Core ML, OTA.

Tiny data (easy-profile synthetic athletes, few trials) so it stays quick; the real
parts all run: a Prefect API, an MLflow SQLite registry, the GX suite, Core ML and
ONNX export and signed manifests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from veloready_pipeline.cli import app
from veloready_pipeline.config import load_settings
from veloready_pipeline.lifecycle.store import CHAMPION, registered_name
from veloready_pipeline.simulate import simulate_athletes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corrupted_data(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    sim = simulate_athletes(n_athletes=5, days=130, seed=3, profile="easy")
    df = sim.frame.copy()
    df["date"] = df["date"].dt.strftime("%Y-%m-%d")
    df = df.astype({"hrv_ms": "object"})
    # sim-0002: HRV in the wrong unit on 20 days (15 %: over the 5 % tolerance);
    # sim-0003: a duplicated date and sim-0004: a bad type (one row each: dropped/masked).
    df.loc[df.index[df["athlete_id"] == "sim-0002"][10:30], "hrv_ms"] = 900.0
    dup = df[df["athlete_id"] == "sim-0003"].iloc[[5]]
    df = pd.concat([df, dup], ignore_index=True)
    df.loc[df.index[df["athlete_id"] == "sim-0004"][7], "hrv_ms"] = "sixty"
    # sim-0005: too little history for a personal model.
    short = df["athlete_id"].eq("sim-0005") & (pd.to_datetime(df["date"]) > "2026-03-01")
    df = df[~short]
    path = tmp_path_factory.mktemp("data") / "athletes.csv"
    df.to_csv(path, index=False)
    return path, df


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def first_run(prefect_api, corrupted_data, home) -> dict:
    """The first `veloready train` into the module's home; the tests below build on it
    (each can run alone or in any order: none relies on another having run first)."""
    data, _ = corrupted_data
    return _train(home, data, home / "s1.json")


def _train(home: Path, data: Path, summary: Path) -> dict:
    runner = CliRunner()
    env = {"VELOREADY_HOME": str(home), "VELOREADY_TUNING__N_TRIALS": "3"}
    result = runner.invoke(app, ["train", "--data", str(data), "--families", "recovery",
                                 "--summary-json", str(summary)], env=env,
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(summary.read_text())


def test_corrupted_athletes_quarantined_others_trained_and_shipped(first_run, corrupted_data,
                                                                    home, monkeypatch):
    data, _ = corrupted_data
    summary = first_run
    status = {r["athlete_id"]: r for r in summary["rows"]}
    assert {a for a, r in status.items() if r["status"] == "quarantined"} == {"sim-0002"}
    assert "hrv_ms" in status["sim-0002"]["reason"]
    # One bad row is dropped or masked, listed, and the athlete trains on the rest.
    for aid in ("sim-0003", "sim-0004"):
        assert status[aid]["status"] in ("registered", "gate_failed"), status[aid]["reason"]
    [dropped] = [n for n in summary["data_notes"]["sim-0003"] if n["kind"] == "dropped"]
    assert dropped["count"] == 2 and {r["file"] for r in dropped["rows"]} == {str(data)}
    [masked] = [n for n in summary["data_notes"]["sim-0004"] if n["kind"] == "masked"]
    assert masked["rows"][0]["message"] == "value 'sixty' is not a valid hrv_ms"
    assert status["sim-0004"]["data_notes"]["masked"] == 1
    assert summary["data_note_counts"]["masked"] >= 21
    assert summary["training_window"]["max_history_days"] == 730
    assert status["sim-0005"]["status"] == "skipped"
    assert "too little history" in status["sim-0005"]["reason"]
    assert status["sim-0001"]["status"] == "registered", status["sim-0001"]["reason"]
    m = status["sim-0001"]["metrics"]
    assert m["rmse"] < m["baseline_rmse"]
    reports = Path(summary["quarantine_dir"])
    text = (reports / "sim-0002.md").read_text()
    assert "hrv_ms" in text and "900" in text
    for aid in ("sim-0003", "sim-0004"):
        assert not (reports / f"{aid}.md").exists()
    assert (reports / "data_notes.json").exists()

    art = status["sim-0001"]["artifacts"]
    assert Path(art["coreml"]).exists() and Path(art["onnx"]).exists()
    manifest = Path(art["ota_manifest"])
    monkeypatch.setenv("VELOREADY_HOME", str(home))
    ok = CliRunner().invoke(app, ["ota", "verify", str(manifest.parent.parent)])
    assert ok.exit_code == 0, ok.output
    assert "trusted key" in ok.output

    # Flip one byte of a shipped model file: verification must fail loudly. The file is
    # restored whatever happens (the home is shared with the re-run test).
    shipped = json.loads(manifest.read_text())["models"][0]["file"]
    model_file = manifest.parent.parent / shipped
    original = model_file.read_bytes()
    blob = bytearray(original)
    blob[len(blob) // 2] ^= 0x01
    model_file.write_bytes(bytes(blob))
    try:
        bad = CliRunner().invoke(app, ["ota", "verify", str(manifest)])
    finally:
        model_file.write_bytes(original)
    assert bad.exit_code == 1
    assert "FAILED" in bad.output and Path(shipped).name in bad.output


def test_rerun_registers_no_duplicate_champion(first_run, corrupted_data, home):
    data, _ = corrupted_data
    settings = load_settings()
    first = first_run
    # Without its record of the trained batch the flow trains again (a re-run that finds
    # its record skips training, tests/test_rerun_skip.py): the registry's own
    # fingerprints must then find the same work instead of registering it twice.
    shutil.rmtree(home / "data" / "rerun")
    again = _train(home, data, home / "s2.json")
    assert again["counts"] == first["counts"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    for row in again["rows"]:
        if row["status"] != "registered":
            continue
        name = registered_name(settings, "recovery", row["athlete_id"])
        versions = client.search_model_versions(f"name = '{name}'")
        assert len(versions) == 1
        assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "1"
        assert "already registered" in row["reason"]


def test_flow_keeps_trained_models_only_for_registered_versions(prefect_api, tmp_path,
                                                                monkeypatch):
    # Only registered versions are exported, so the flow drops every other model as its
    # chunk is registered (the flow process must not hold all N networks until the end).
    from flows.weekly_training import RegistryArgs, train_chunks

    monkeypatch.setenv("VELOREADY_HOME", str(tmp_path))
    easy = simulate_athletes(n_athletes=2, days=130, seed=3, profile="easy").frame
    hard = simulate_athletes(n_athletes=2, days=130, seed=3, profile="realistic").frame
    hard["athlete_id"] = hard["athlete_id"].str.replace("sim-", "hard-")
    frame = pd.concat([easy, hard], ignore_index=True)
    settings = load_settings(tuning={"n_trials": 2})
    results, outcomes = train_chunks(frame, ["recovery"], settings, None, False,
                                     RegistryArgs("test-data", {"source": "test"},
                                                  tmp_path / "plots"))
    registered = {(o.athlete_id, o.family) for o in outcomes if o.version is not None}
    trained = [r for r in results if r.status == "trained"]
    assert registered and len(trained) > len(registered), [r.reason for r in results]
    for r in trained:
        assert (r.model is not None) == ((r.athlete_id, r.family) in registered), r.athlete_id
        assert r.metrics and r.test_y is not None  # the summary still has what it needs
