"""A re-run with nothing changed trains nothing; a changed batch or a broken export trains.

Tiny data (4 easy athletes x 130 days, recovery only, 3 trials) through the real weekly
flow: Prefect (test harness), GX, MLflow SQLite registry, Core ML/ONNX export, signed
manifests. Fits are counted at `training.train_family` and `training.fit_population`
(the thread runner calls them in this process). Recovery fits one population model
over every athlete before its personal trees, so one athlete's changed rows retrain
the family's whole batch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from veloready_pipeline import training
from veloready_pipeline.config import load_settings
from veloready_pipeline.lifecycle.manifests import export_dir
from veloready_pipeline.simulate import simulate_athletes


def test_batch_fingerprint_covers_rows_settings_and_code(monkeypatch):
    from veloready_pipeline import rerun

    base = load_settings()
    ids = ["a", "b"]

    def fp(settings=base, digest="d1", family="recovery", athletes=ids):
        return rerun.batch_fingerprint(family, digest, athletes, settings)

    assert fp() == fp()
    assert fp(digest="d2") != fp()  # another row anywhere in the batch
    assert fp(athletes=["a"]) != fp()
    assert fp(family="zones") != fp()
    assert fp(load_settings(seed=base.seed + 1)) != fp()
    assert fp(load_settings(tuning={"n_trials": 3})) != fp()
    assert fp(load_settings(gates={"recovery": {"rmse_max": 7.5}})) != fp()
    # What cannot change a recovery model: another family's gate, the briefs.
    assert fp(load_settings(gates={"zones": {"mae_max": 9.0}})) == fp()
    assert fp(load_settings(briefs={"provider": "rules"})) == fp()
    before = fp()
    monkeypatch.setattr(rerun, "_CODE_HASH", "another-module-hash")  # a module edited
    assert fp() != before


@pytest.fixture
def fits(monkeypatch) -> list[tuple[str, list[str]]]:
    """(family, athletes) of every chunk fit; population fits as (family + ':population')."""
    calls: list[tuple[str, list[str]]] = []
    real_train, real_population = training.train_family, training.fit_population

    def train(family, frame, athlete_ids, *args, **kwargs):
        calls.append((family, list(athlete_ids)))
        return real_train(family, frame, athlete_ids, *args, **kwargs)

    def population(family, frame, athlete_ids, *args, **kwargs):
        calls.append((f"{family}:population", []))
        return real_population(family, frame, athlete_ids, *args, **kwargs)

    monkeypatch.setattr(training, "train_family", train)
    monkeypatch.setattr(training, "fit_population", population)
    return calls


def _run(data: Path, summary: Path) -> dict:
    from flows.weekly_training import weekly_training

    settings = load_settings()
    weekly_training(settings=settings, data=str(data), families=["recovery"],
                    summary_json=str(summary), progress=False)
    return json.loads(summary.read_text())


def _statuses(summary: dict) -> dict[str, str]:
    return {r["athlete_id"]: r["status"] for r in summary["rows"]}


@pytest.mark.slow
def test_rerun_skips_unchanged_batch_and_retrains_changed(prefect_api, veloready_home,
                                                           monkeypatch, fits):
    monkeypatch.setenv("VELOREADY_TUNING__N_TRIALS", "3")
    monkeypatch.setenv("VELOREADY_EXECUTION__LOCAL_WORKERS", "1")
    sim = simulate_athletes(n_athletes=4, days=130, seed=5, profile="easy")
    df = sim.frame.copy()
    df["date"] = df["date"].dt.strftime("%Y-%m-%d")
    data = veloready_home / "athletes.csv"
    df.to_csv(data, index=False)
    ids = sorted(df["athlete_id"].unique())

    first = _run(data, veloready_home / "s1.json")
    assert [a for _, chunk in fits for a in chunk] == ids
    assert ("recovery:population", []) in fits
    assert "unchanged" not in _statuses(first).values()
    assert first["rerun"]["recorded"] == ["recovery"]
    registered = {r["athlete_id"]: r["registry_version"] for r in first["rows"]
                  if r["status"] == "registered"}
    assert registered, first["rows"]

    # Nothing changed: no fit, every row `unchanged` with its earlier status and version.
    fits.clear()
    second = _run(data, veloready_home / "s2.json")
    assert fits == []
    assert set(_statuses(second).values()) == {"unchanged"}
    by_id = {r["athlete_id"]: r for r in second["rows"]}
    for r in first["rows"]:
        again = by_id[r["athlete_id"]]
        assert again["previous_status"] == r["status"]
        assert again["registry_version"] == r["registry_version"]
        assert again["metrics"] == r["metrics"]
        assert again["reason"].startswith(f"unchanged since flow run {first['flow_run_id']}")
    assert second["counts"] == {"recovery": {"unchanged": len(ids)}}
    assert second["rerun"]["unchanged"] == {"recovery": first["flow_run_id"]}
    assert second["report"]["pooled_metrics"]["recovery"]["passed"] == len(registered)

    # One athlete's data changed: the family's batch trains again (all its athletes).
    changed = df.copy()
    rows = changed.index[changed["athlete_id"] == ids[1]][40:45]
    changed.loc[rows, "sleep_hours"] = changed.loc[rows, "sleep_hours"] + 0.5
    changed.to_csv(data, index=False)
    fits.clear()
    third = _run(data, veloready_home / "s3.json")
    assert sorted(a for _, chunk in fits for a in chunk) == ids
    assert ("recovery:population", []) in fits
    assert "unchanged" not in _statuses(third).values()
    assert "changed" in third["rerun"]["trained"]["recovery"]

    # The champion's export folder lost: not unchanged any more, the family trains.
    aid = sorted(registered)[0]
    settings = load_settings()
    from veloready_pipeline.lifecycle.store import configure_mlflow, model_aliases

    champion = model_aliases(configure_mlflow(settings), settings, "recovery", aid)["champion"]
    folder = export_dir(settings, "recovery", aid, champion)
    shutil.rmtree(folder)
    fits.clear()
    fourth = _run(data, veloready_home / "s4.json")
    assert sorted(a for _, chunk in fits for a in chunk) == ids
    assert "has no export" in fourth["rerun"]["trained"]["recovery"]
    assert pd.Series(_statuses(fourth)).ne("unchanged").all()
