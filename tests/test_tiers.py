"""The test tiers themselves: every unit test runs guarded, and the guard refuses what
the unit tier may not reach (tests/conftest.py TIERS, tests/unit_guard.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import unit_guard
from conftest import TIER_NAMES, TIERS
from unit_guard import TierViolation

TESTS = Path(__file__).resolve().parent


def test_every_test_file_has_one_tier_and_every_entry_a_file() -> None:
    files = {p.name for p in TESTS.glob("test_*.py")}
    whole = {key for key in TIERS if "::" not in key}
    assert whole == files
    assert {key.split("::")[0] for key in TIERS} <= files
    assert set(TIERS.values()) <= set(TIER_NAMES)


def test_this_unit_test_cannot_reach_an_mlflow_store(tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    import mlflow

    db = tmp_path / "mlflow.db"
    with pytest.raises(TierViolation, match=r"reached an MLflow store \(MlflowClient\)"):
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    with pytest.raises(TierViolation, match=r"an MLflow store \(mlflow.set_tracking_uri\)"):
        mlflow.set_tracking_uri(f"sqlite:///{db}")
    assert not db.exists()


def test_guard_patches_a_library_first_imported_during_the_test(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "tiers_fake_db.py"
    lib.write_text("def connect(*args):\n    return 'connected'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(unit_guard.GUARDED, "tiers_fake_db",
                        [("connect", "a fake database (tiers_fake_db.connect)")])
    monkeypatch.delitem(sys.modules, "tiers_fake_db", raising=False)
    finders = list(sys.meta_path)  # this unit test's own guard is one of them
    inner = pytest.MonkeyPatch()
    remove = unit_guard.guard("demo::test", inner)
    try:
        import tiers_fake_db

        with pytest.raises(TierViolation, match=r"demo::test reached a fake database"):
            tiers_fake_db.connect()
    finally:
        remove()
        inner.undo()
    assert tiers_fake_db.connect() == "connected"  # undone when the test ends
    assert sys.meta_path == finders


def test_guard_refuses_prefect_core_ml_and_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    """(integration tier: it imports Prefect and coremltools to show the guard on them.)"""
    import coremltools
    import psycopg2
    from prefect import flow, task

    @flow
    def tiny_flow() -> int:
        return 1

    @task
    def tiny_task() -> int:
        return 1

    inner = pytest.MonkeyPatch()
    remove = unit_guard.guard("demo::test", inner)
    try:
        from prefect.testing.utilities import prefect_test_harness

        with pytest.raises(TierViolation, match="the Prefect flow engine"):
            tiny_flow()
        with pytest.raises(TierViolation, match="the Prefect task engine"):
            tiny_task()
        with pytest.raises(TierViolation, match="a Prefect server"):
            prefect_test_harness()
        with pytest.raises(TierViolation, match=r"a Core ML conversion \(coremltools.convert\)"):
            coremltools.convert(object())
        with pytest.raises(TierViolation, match=r"PostgreSQL \(psycopg2.connect\)"):
            psycopg2.connect("postgresql://nobody@127.0.0.1:1/none")
    finally:
        remove()
        inner.undo()
    assert not hasattr(coremltools.convert, "__tier_guard__")
    assert not hasattr(psycopg2.connect, "__tier_guard__")
