"""Keeps the ``unit`` tier honest: while a unit test runs, reaching an MLflow store,
converting to Core ML, running a Prefect flow, task or server, or connecting to
PostgreSQL raises :class:`TierViolation` naming what was reached.

The heavy libraries are not imported to patch them: an entry point is patched when its
module is already loaded, and otherwise the moment a unit test loads it (an import
hook), so the unit tier pays no import cost for a library it never touches. Every
patch is undone when the test ends (``monkeypatch``).

Used by ``tests/conftest.py`` (the tier table and the autouse fixture live there).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

# module -> [(attribute path inside it, what reaching it means)]. Everything an
# integration or flow test needs and a unit test must not.
GUARDED: dict[str, list[tuple[str, str]]] = {
    "mlflow": [("set_tracking_uri", "an MLflow store (mlflow.set_tracking_uri)"),
               ("set_registry_uri", "an MLflow store (mlflow.set_registry_uri)")],
    "mlflow.tracking.client": [("MlflowClient.__init__", "an MLflow store (MlflowClient)")],
    "coremltools": [("convert", "a Core ML conversion (coremltools.convert)")],
    "coremltools.converters.mil.converter": [
        ("mil_convert", "a Core ML conversion (coremltools mil_convert)")],
    "coremltools.converters.xgboost._tree_ensemble": [
        ("convert_tree_ensemble", "a Core ML conversion (coremltools convert_tree_ensemble)")],
    "prefect.flow_engine": [("run_flow", "the Prefect flow engine (a @flow call)")],
    "prefect.task_engine": [("run_task_sync", "the Prefect task engine (a @task call)"),
                            ("run_task_async", "the Prefect task engine (a @task call)")],
    "prefect.testing.utilities": [
        ("prefect_test_harness", "a Prefect server (prefect_test_harness)")],
    "prefect.server.api.server": [
        ("SubprocessASGIServer.start", "a Prefect server (SubprocessASGIServer.start)")],
    "psycopg2": [("connect", "PostgreSQL (psycopg2.connect)")],
    "psycopg": [("connect", "PostgreSQL (psycopg.connect)")],
}

#: Fixtures that start what the unit tier may not use.
FORBIDDEN_FIXTURES = {"prefect_api": "a Prefect server (the prefect_api fixture)"}


class TierViolation(RuntimeError):
    """A unit-tier test reached an MLflow store, Core ML, Prefect or PostgreSQL."""


def _refuse(nodeid: str, what: str) -> Callable[..., Any]:
    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise TierViolation(
            f"unit-tier test {nodeid} reached {what}; a test that needs it belongs to the "
            "'integration' or 'flow' tier (tests/conftest.py TIERS)")

    refused.__tier_guard__ = True  # type: ignore[attr-defined]
    return refused


def _patch(module: ModuleType, nodeid: str, mp: pytest.MonkeyPatch) -> None:
    for path, what in GUARDED[module.__name__]:
        *owner_path, attr = path.split(".")
        owner: Any = module
        try:
            for part in owner_path:
                owner = getattr(owner, part)
            getattr(owner, attr)
        except AttributeError:
            continue  # not in this version of the library: nothing to reach there
        mp.setattr(owner, attr, _refuse(nodeid, what))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches a guarded module right after a unit test first imports it."""

    def __init__(self, nodeid: str, mp: pytest.MonkeyPatch) -> None:
        self.nodeid, self.mp = nodeid, mp

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in GUARDED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        loader, hook = spec.loader, self

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: ModuleType) -> None:
                loader.exec_module(module)
                _patch(module, hook.nodeid, hook.mp)

            def __getattr__(self, item: str) -> Any:  # resources, get_data, is_package...
                return getattr(loader, item)

        spec.loader = _Loader()
        return spec


def guard(nodeid: str, mp: pytest.MonkeyPatch) -> Callable[[], None]:
    """Patch every guarded entry point for the test ``nodeid`` (``mp`` undoes the
    patches); returns the function that removes the import hook."""
    for name in GUARDED:
        module = sys.modules.get(name)
        if module is not None:
            _patch(module, nodeid, mp)
    finder = _PatchOnImport(nodeid, mp)
    sys.meta_path.insert(0, finder)

    def remove() -> None:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)

    return remove
