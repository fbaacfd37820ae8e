"""Production backends against the REAL PostgreSQL server on 127.0.0.1:5432.

* MLflow tracking + registry on PostgreSQL, written by several worker processes at
  once (the reason to leave SQLite: it answers "database is locked" to a second
  writer). Every passing model must be registered exactly once - also when two
  processes race on the same work or on a fresh, empty database - and every
  ``champion`` alias must point at a version whose tags say so.
* The Prefect server on PostgreSQL (``PREFECT_API_DATABASE_CONNECTION_URL``), started
  as `prefect server start`, with a tiny flow run recorded in that database.
* ``configs/production.yaml`` loads, and the environment switches it.

Each test creates a uniquely named database and drops it afterwards. Without a
reachable server the tests are skipped with the connection error;
``VELOREADY_TEST_PG_ADMIN_URL`` points them at another server.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from helpers_data import toy_athlete
from helpers_prefect import running_prefect_server
from veloready_pipeline.config import TrainingConfig, load_settings

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("VELOREADY_TEST_PG_ADMIN_URL",
                           "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")

pytestmark = pytest.mark.postgres


def _fresh_database() -> Iterator[str]:
    """Create ``vr_<random>``, yield its psycopg2 URL, drop it (even if still in use)."""
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": 5})
    try:
        with admin.connect():
            pass
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL}: {str(exc.orig).strip()}")
    name = f"vr_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(ADMIN_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_database() -> Iterator[str]:
    yield from _fresh_database()


# ------------------------------------------------------------------ MLflow


def _settings(tracking_uri: str, artifacts: Path) -> Any:
    return load_settings(tracking_uri=tracking_uri, artifact_root=artifacts.as_uri(),
                         tuning={"n_trials": 3})


def _register_worker(args: tuple[str, str, list[Any], str, Any]) -> list[dict[str, Any]]:
    """One worker process: wait for the others, then register its results."""
    tracking_uri, artifacts, results, data_hash, barrier = args
    from veloready_pipeline.lifecycle.registry import register_results
    from veloready_pipeline.training import score_model

    settings = _settings(tracking_uri, Path(artifacts))
    barrier.wait(timeout=300)
    outcomes = register_results(results, settings, data_hash=data_hash,
                                lineage={"source": "test", "worker": str(os.getpid())},
                                score_fn=score_model, plot_fn=None,
                                workdir=Path(artifacts).parent / f"plots-{os.getpid()}")
    return [{"athlete_id": o.athlete_id, "version": o.version, "champion": o.champion,
             "reused": o.reused, "decision": o.decision, "pid": os.getpid()} for o in outcomes]


def _register_in_parallel(tracking_uri: str, artifacts: Path, chunks: list[list[Any]],
                          data_hash: str) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(len(chunks))
        with ctx.Pool(len(chunks)) as pool:
            parts = pool.map(_register_worker, [(tracking_uri, str(artifacts), chunk, data_hash,
                                                 barrier) for chunk in chunks])
    return [o for part in parts for o in part]


@pytest.fixture(scope="module")
def passing_results() -> list[Any]:
    from veloready_pipeline.models.recovery import train_recovery_model

    settings = load_settings(tuning={"n_trials": 3})
    out = []
    for seed in range(20):  # six learnable toy athletes whose models pass their gates
        r = train_recovery_model(toy_athlete(f"pg{len(out)}", n=140, seed=seed, noise=2.0),
                                 TrainingConfig.from_settings(settings, "recovery"))
        if r.passed:
            out.append(r)
        if len(out) == 6:
            return out
    raise AssertionError("fewer than 6 toy athletes pass their gates")


def _check_registry(tracking_uri: str, ids: list[str], versions_each: int) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from veloready_pipeline.lifecycle.store import CHAMPION, registered_name

    settings = load_settings()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    champions = {}
    for aid in ids:
        name = registered_name(settings, "recovery", aid)
        versions = client.search_model_versions(f"name = '{name}'")
        fps = [v.tags.get("fingerprint") for v in versions]
        assert len(versions) == versions_each, (aid, [v.version for v in versions])
        assert len(set(fps)) == len(fps), f"{aid}: the same work registered twice"
        champ = client.get_model_version_by_alias(name, CHAMPION)
        assert str(champ.version) in {str(v.version) for v in versions}
        assert champ.tags.get("review_decision") or champ.tags.get("champion_decision")
        champions[aid] = str(champ.version)
    return champions


@pytest.mark.slow
def test_parallel_workers_register_into_postgres_exactly_once(pg_database, passing_results,
                                                              tmp_path):
    import copy

    tracking_uri = pg_database  # postgresql+psycopg2:// (SQLAlchemy 2.1's bare
    # postgresql:// means the psycopg 3 driver, which the pinned environment lacks)
    artifacts = tmp_path / "artifacts"
    ids = [r.athlete_id for r in passing_results]
    # Three processes start together on an EMPTY database (they race on creating
    # MLflow's schema and the experiment); pg0 is given to all three (a race on the
    # same work); the others are split between them.
    chunks = [[passing_results[0], *passing_results[1 + k::3]] for k in range(3)]
    first = _register_in_parallel(tracking_uri, artifacts, chunks, "week-1")
    assert len({o["pid"] for o in first}) == 3
    by_athlete: dict[str, list[dict[str, Any]]] = {}
    for o in first:
        by_athlete.setdefault(o["athlete_id"], []).append(o)
    assert all(o["version"] == "1" for o in first), first
    assert len(by_athlete["pg0"]) == 3 and {o["version"] for o in by_athlete["pg0"]} == {"1"}
    champions = _check_registry(tracking_uri, ids, versions_each=1)
    assert set(champions.values()) == {"1"}

    # The same work again, in parallel: nothing new is registered, nothing moves.
    again = _register_in_parallel(tracking_uri, artifacts, chunks, "week-1")
    assert all(o["reused"] or "concurrently" in o["decision"] for o in again), again
    assert _check_registry(tracking_uri, ids, versions_each=1) == champions

    # Next week's models (new data hash), registered in parallel: one new version each;
    # the champion moves only where the new version is better on the same test rows
    # (every other athlete gets a model fitted to those rows: it must win; the rest
    # re-register last week's model: equal loss, the champion stays).
    import numpy as np
    import xgboost as xgb

    week2, better = [], set()
    for i, r in enumerate(passing_results):
        r2 = copy.copy(r)
        r2.data_window = dict(r.data_window, end="2026-06-01")
        if i % 2:
            fit = xgb.DMatrix(np.asarray(r.test_X), label=np.asarray(r.test_y),
                              feature_names=list(r.feature_names))
            r2.model = xgb.train({"max_depth": 6, "eta": 0.5, "nthread": 1}, fit, 60)
            better.add(r.athlete_id)
        week2.append(r2)
    chunks2 = [week2[k::3] for k in range(3)]
    second = _register_in_parallel(tracking_uri, artifacts, chunks2, "week-2")
    # (pg0's withdrawn duplicates keep their numbers: MLflow never reuses a version.)
    new_version = {o["athlete_id"]: o["version"] for o in second}
    assert sorted(new_version) == sorted(ids) and "1" not in new_version.values()
    after = _check_registry(tracking_uri, ids, versions_each=2)
    assert {a for a, v in after.items() if v == new_version[a]} == better
    assert {a for a, v in after.items() if v == "1"} == set(ids) - better
    assert {o["athlete_id"] for o in second if o["champion"]} == better


@pytest.mark.slow
def test_register_stage_spreads_over_local_processes_on_postgres(pg_database,
                                                                passing_results, tmp_path,
                                                                monkeypatch):
    """With several local workers configured, one `register_results` call shards."""
    from veloready_pipeline.lifecycle import registry
    from veloready_pipeline.training import score_model

    monkeypatch.setattr(registry, "MIN_RESULTS_PER_WRITER", 2)
    calls = []
    real = registry._register_in_processes

    def spy(results, settings, workers, **kwargs):
        calls.append(workers)
        return real(results, settings, workers, **kwargs)

    monkeypatch.setattr(registry, "_register_in_processes", spy)
    settings = _settings(pg_database, tmp_path / "artifacts").model_copy(
        update={"execution": load_settings(execution={"local_workers": 2}).execution})
    outcomes = registry.register_results(passing_results, settings, data_hash="w1",
                                         lineage={"source": "test"}, score_fn=score_model,
                                         plot_fn=None, workdir=tmp_path / "plots")
    assert calls == [2]
    assert [o.athlete_id for o in outcomes] == [r.athlete_id for r in passing_results]
    assert all(o.version == "1" and o.champion for o in outcomes)
    _check_registry(pg_database, [r.athlete_id for r in passing_results], versions_each=1)


def test_sqlite_registry_is_single_writer_by_design():
    """The embedded default stays SQLite (one writer); a server store takes several."""
    from veloready_pipeline.lifecycle.registry import MIN_RESULTS_PER_WRITER, _registry_workers

    many = 10 * MIN_RESULTS_PER_WRITER
    embedded = load_settings(config_file=ROOT / "configs" / "embedded.yaml",
                             execution={"local_workers": 4})
    assert embedded.mlflow_tracking_uri().startswith("sqlite:///")
    assert _registry_workers(embedded, many) == 1
    server = load_settings(tracking_uri="postgresql+psycopg2://u@h:5432/m",
                           execution={"local_workers": 4})
    assert _registry_workers(server, many) == 4
    assert _registry_workers(server, MIN_RESULTS_PER_WRITER) == 1


# ------------------------------------------------------------------ configuration


def test_production_config_loads_and_env_switches_it(monkeypatch):
    path = ROOT / "configs" / "production.yaml"
    settings = load_settings(config_file=path)
    assert settings.mlflow_tracking_uri().startswith("postgresql+psycopg2://")
    assert settings.execution.dask_address and settings.execution.dask_address.startswith(
        "tcp://")
    monkeypatch.setenv("VELOREADY_TRACKING_URI",
                       "postgresql+psycopg2://mlflow@db.internal:5432/mlflow")
    monkeypatch.setenv("VELOREADY_EXECUTION__DASK_ADDRESS", "tcp://dask.internal:8786")
    switched = load_settings(config_file=path)
    assert switched.tracking_uri == "postgresql+psycopg2://mlflow@db.internal:5432/mlflow"
    assert switched.execution.dask_address == "tcp://dask.internal:8786"


# ------------------------------------------------------------------ Prefect server


TINY_FLOW = """
from prefect import flow, task

@task
def add(a, b):
    return a + b

@flow(name="tiny-postgres-flow")
def tiny(n):
    return sum(add.submit(i, i).result() for i in range(n))

print("RESULT", tiny(3))
"""


@pytest.mark.slow
def test_prefect_server_on_postgres_runs_a_flow(pg_database, tmp_path):
    import httpx

    db_url = pg_database.replace("postgresql+psycopg2://", "postgresql+asyncpg://")
    server_env = {"PREFECT_API_DATABASE_CONNECTION_URL": db_url,
                  "PREFECT_LOGGING_LEVEL": "WARNING"}
    with running_prefect_server(tmp_path, server_env, strip=("PREFECT_",)) as (api, env, _):
        client_env = env | {"PREFECT_API_URL": api}
        client_env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
        run = subprocess.run([sys.executable, "-c", TINY_FLOW], env=client_env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "RESULT 6" in run.stdout
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).json()
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
        # ... and the server really keeps its state in this PostgreSQL database.
        engine = sa.create_engine(pg_database)
        with engine.connect() as conn:
            stored = conn.execute(sa.text(
                "select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id"
            )).fetchall()
        engine.dispose()
        assert [(n, str(s)) for n, s in stored] == [("tiny-postgres-flow", "COMPLETED")]
        tasks = httpx.post(f"{api}/task_runs/filter", json={}, timeout=30).json()
        assert len(tasks) == 3 and {t["state_type"] for t in tasks} == {"COMPLETED"}
