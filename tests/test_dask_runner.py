"""The weekly flow on a real Dask cluster equals the single-process run, model for model.

A `distributed.LocalCluster` with two worker *processes* stands in for a remote
cluster: the flow only gets its scheduler address (``execution.dask_address``), as it
would get ``tcp://host:8786``. Everything the tasks send to workers must pickle, the
training must run in the worker processes (checked through the stage-timing records
they write), and with the same data and seed every metric, verdict, registered
version and champion must equal the run in one process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.weekly_training import weekly_training
from tasks.runners import make_task_runner
from veloready_pipeline.config import TrainingConfig, load_settings
from veloready_pipeline.simulate import simulate_athletes, write_simulation
from veloready_pipeline.timing import ENV as TIMING_ENV
from veloready_pipeline.timing import read_records

pytestmark = pytest.mark.slow

N_ATHLETES = 6


@pytest.fixture(scope="module")
def prefect_api():
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    sim = simulate_athletes(n_athletes=N_ATHLETES, days=130, seed=5, profile="easy")
    return write_simulation(sim, tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def timing_file(tmp_path_factory) -> Path:
    """Set before the cluster starts, so the worker processes inherit it."""
    path = tmp_path_factory.mktemp("timing") / "timing.jsonl"
    old = os.environ.get(TIMING_ENV)
    os.environ[TIMING_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(TIMING_ENV, None)
    else:
        os.environ[TIMING_ENV] = old


@pytest.fixture(scope="module")
def cluster(timing_file):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=":0") as cl, Client(cl) as client:
        yield cl, client


def _run(home: Path, data: Path, monkeypatch: pytest.MonkeyPatch, **execution) -> dict:
    monkeypatch.setenv("VELOREADY_HOME", str(home))
    settings = load_settings(families=["recovery"], tuning={"n_trials": 4},
                             execution={"chunk_size": 2, **execution})
    summary = weekly_training(settings=settings, data=str(data), families=["recovery"],
                              summary_json=str(home / "summary.json"), progress=False)
    return json.loads(Path(summary["summary_path"]).read_text())


def _comparable(summary: dict) -> dict:
    return {(r["athlete_id"], r["family"]): (r["status"], r["metrics"], r["registry_version"],
                                             r["champion"], r["reason"])
            for r in summary["rows"]}


def test_runner_choice_follows_configuration():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(make_task_runner(load_settings()), ThreadPoolTaskRunner)
    remote = make_task_runner(load_settings(execution={"dask_address": "tcp://10.0.0.5:8786"}))
    assert isinstance(remote, DaskTaskRunner)
    local = make_task_runner(load_settings(execution={"local_workers": 2}))
    assert isinstance(local, DaskTaskRunner)


def test_flow_on_dask_cluster_equals_single_process_run(prefect_api, data_path, cluster,
                                                        timing_file, tmp_path, monkeypatch):
    cl, client = cluster
    worker_pids = set(client.run(os.getpid).values())
    assert len(worker_pids) == 2

    single = _run(tmp_path / "single", data_path, monkeypatch)
    in_flow = {r["pid"] for r in read_records(str(timing_file)) if r["stage"] == "train"}
    assert in_flow == {os.getpid()}, "the single-process run trains in the flow's process"

    timing_file.write_text("")
    dask = _run(tmp_path / "dask", data_path, monkeypatch, dask_address=cl.scheduler_address)
    on_workers = {r["pid"] for r in read_records(str(timing_file)) if r["stage"] == "train"}
    assert on_workers and on_workers <= worker_pids, (on_workers, worker_pids)

    a, b = _comparable(single), _comparable(dask)
    assert a.keys() == b.keys() and len(a) == N_ATHLETES
    assert a == b
    registered = [k for k, v in a.items() if v[0] == "registered"]
    assert len(registered) >= N_ATHLETES // 2, a  # easy profile: most pass their gates
    assert all(a[k][2] == "1" and a[k][3] for k in registered)
    assert single["counts"] == dask["counts"]


def test_export_in_local_processes_equals_serial_export(veloready_home, monkeypatch):
    """Core ML/ONNX export spread over local processes writes the same files and records."""
    from types import SimpleNamespace

    from helpers_data import toy_athlete
    from veloready_pipeline.lifecycle import convert, publish
    from veloready_pipeline.models.recovery import train_recovery_model

    base = load_settings(tuning={"n_trials": 2})
    config = TrainingConfig.from_settings(base, "recovery")
    results = [train_recovery_model(toy_athlete(f"x{i}", n=120, seed=i, noise=2.0), config)
               for i in range(8)]
    outcomes = [SimpleNamespace(athlete_id=r.athlete_id, family=r.family, version="1",
                                registered_name=f"veloready-recovery-{r.athlete_id}",
                                run_id=None) for r in results]
    used = []
    real = publish.run_exports

    def spy(jobs, settings):
        used.append(min(settings.execution.local_workers,
                        len(jobs) // convert.MIN_EXPORTS_PER_PROCESS))
        return real(jobs, settings)

    monkeypatch.setattr(publish, "run_exports", spy)
    records = {}
    for workers in (1, 2):
        monkeypatch.setenv("VELOREADY_HOME", str(veloready_home / f"w{workers}"))
        settings = load_settings(execution={"local_workers": workers})
        records[workers] = publish.export_registered(results, outcomes, settings)
    assert used == [1, 2]  # the second run really used two processes
    assert len(records[1]) == 8 and all("error" not in r for r in records[1].values())

    def digest(recs):
        return {k: (r["shipped"], {a: (v["sha256"], v["size_bytes"])
                                   for a, v in r["artifacts"].items()})
                for k, r in recs.items()}

    assert digest(records[1]) == digest(records[2])
