"""End to end (`veloready train`): odd athlete ids train, register and
ship without touching anyone else, an unusable id is quarantined with its reason, and a
run that failed between a model version and its champion alias is repaired by the next
run (the summary says `registered` only once the version is champion and shipped).

Both runs are the real `veloready train` in a child process: the first is killed with
SIGKILL right after the first model version is created (issue 15's crash point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from veloready_pipeline.config import load_settings
from veloready_pipeline.ids import athlete_key
from veloready_pipeline.lifecycle.store import CHAMPION, EXPERIMENT, registered_name
from veloready_pipeline.simulate import simulate_athletes

pytestmark = pytest.mark.slow

# "x y" and "x-y" get the same rows (same model): they must still be two models.
ODD_IDS = {"sim-0001": "x y", "sim-0003": "Zoë/../山田", "sim-0004": "x" * 300,
           "sim-0005": "..", "sim-0006": "bad\nid", "sim-0007": "a/b"}


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    frame = simulate_athletes(n_athletes=7, days=130, seed=3, profile="easy").frame
    twin = frame[frame["athlete_id"] == "sim-0001"].assign(athlete_id="x-y")
    frame = frame[frame["athlete_id"].isin(list(ODD_IDS))]
    frame = pd.concat([frame.assign(athlete_id=frame["athlete_id"].map(ODD_IDS)), twin])
    path = tmp_path_factory.mktemp("odd") / "athletes.parquet"
    frame.to_parquet(path, index=False)
    return path


def _veloready(home: Path, *args: str, kill_after_version: bool = False):
    """The real command line in a child process (SIGKILLed after the first version)."""
    import veloready_pipeline

    here = Path(__file__).parent
    src = str(Path(veloready_pipeline.__file__).parent.parent)  # this checkout's code
    env = os.environ | {"VELOREADY_HOME": str(home), "VELOREADY_TUNING__N_TRIALS": "3",
                        "PYTHONPATH": os.pathsep.join([src, str(here.parent), str(here)])}
    env.pop("PREFECT_API_URL", None)  # its own local server, ended with it
    cmd = ([sys.executable, str(here / "lifecycle_helpers.py"), "veloready"]
           if kill_after_version else [sys.executable, "-m", "veloready_pipeline.cli"])
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=1200,
                          env=env)


def test_odd_ids_ship_and_a_kill_9_before_the_alias_is_repaired(odd_data, tmp_path,
                                                                monkeypatch):
    train = ("train", "--data", str(odd_data), "--families", "recovery")
    killed = _veloready(tmp_path, *train, "--summary-json", str(tmp_path / "s1.json"),
                        kill_after_version=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "s1.json").exists()
    crashed_name = killed.stderr.split("kill -9 after creating ")[1].split()[0]
    monkeypatch.setenv("VELOREADY_HOME", str(tmp_path))
    settings = load_settings()
    uri = settings.mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the global registry URI
    assert client.get_registered_model(crashed_name).aliases == {}  # a version, no champion
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert [r.info.status for r in client.search_runs([exp.experiment_id])] == ["RUNNING"]

    again = _veloready(tmp_path, *train, "--summary-json", str(tmp_path / "s2.json"))
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "s2.json").read_text())
    rows = {r["athlete_id"]: r for r in summary["rows"]}
    assert set(rows) == set(ODD_IDS.values()) | {"x-y"}
    bad = rows["bad\nid"]
    assert bad["status"] == "quarantined"
    assert "athlete id contains control character U+000A at position 3" in bad["reason"]
    assert (Path(summary["quarantine_dir"]) / (athlete_key("bad\nid") + ".md")).exists()

    registered = {a: r for a, r in rows.items() if r["status"] == "registered"}
    assert {"x y", "x-y"} <= set(registered), {a: (r["status"], r["reason"])
                                               for a, r in rows.items()}
    assert len(registered) >= 5
    assert len({r["registry_name"] for r in registered.values()}) == len(registered)
    ota = settings.resolve(settings.paths.ota_dir).resolve()
    exports = (settings.resolve(settings.paths.data_dir) / "exports" / "recovery").resolve()
    for aid, row in registered.items():
        assert row["registry_name"] == registered_name(settings, "recovery", aid)
        assert str(client.get_model_version_by_alias(row["registry_name"], CHAMPION).version
                   ) == row["registry_version"] == "1"
        manifest = Path(row["artifacts"]["ota_manifest"]).resolve()
        assert manifest.parent.parent == ota and manifest.parent.name == athlete_key(aid)
        assert json.loads(manifest.read_text())["athlete_id"] == aid
        assert Path(row["artifacts"]["onnx"]).resolve().parent.parent.parent == exports
    repaired = [r for r in registered.values() if r["registry_name"] == crashed_name]
    assert len(repaired) == 1 and repaired[0]["reason"].startswith("repaired: v1 was "), repaired
    runs = client.search_runs([exp.experiment_id], "tags.fingerprint != ''")
    assert {r.info.status for r in runs} == {"FINISHED"}
    trained = [r for r in rows.values() if r["status"] not in ("quarantined", "skipped")]
    assert len(runs) == len(trained)

    ok = _veloready(tmp_path, "ota", "verify", str(ota))
    assert ok.returncode == 0, ok.stdout + ok.stderr
