"""Shared test set-up: every test session gets its own homes, never the user's.

Prefect, MLflow and the pipeline's own paths all point into a temporary folder, and
Prefect analytics are off, so tests run offline and never touch a shared home.

Test tiers (``pytest -m unit``, ``-m integration``, ``-m flow``; plain ``pytest`` runs all
three). ``TIERS`` below gives every test file its tier, and a ``file::test`` entry moves
one test of a mixed file; a test file missing from it fails the collection. A unit test
that reaches an MLflow store, a Core ML conversion, Prefect (flow, task or server) or
PostgreSQL fails with ``TierViolation`` (``tests/unit_guard.py``).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="veloready-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The pipeline's INFO logs still reach the API (tests read them there), but the console
# shows warnings only: Prefect re-creates its console handler on the stream of the moment
# (inside a CliRunner.invoke that stream is closed afterwards), and quiet test output.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ["VELOREADY_HOME"] = str(_SESSION_HOME / "home")
os.environ.pop("VELOREADY_CONFIG", None)
os.environ.pop("OPENAI_API_KEY", None)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
(_SESSION_HOME / "home").mkdir(parents=True, exist_ok=True)

import pytest  # noqa: E402
import unit_guard  # noqa: E402
from _pytest.mark.expression import Expression  # noqa: E402

UNIT, INTEGRATION, FLOW = "unit", "integration", "flow"

#: tier of every test file; ``file::test`` (a test function's name, every parameter of
#: it) moves one test of a file whose tests are of several kinds.
#:   unit:        no MLflow store, no Core ML conversion, no Prefect, no PostgreSQL
#:   integration: MLflow stores, Core ML/ONNX export, PostgreSQL, real HTTP servers,
#:                `veloready` in a subprocess that stops before any flow, and the few
#:                end-to-end trainings and volume runs of the model and validation files
#:                (several seconds each: they keep `pytest -m unit` under a minute)
#:   flow:        Prefect flows and servers, end-to-end `veloready` runs
TIERS: dict[str, str] = {
    "test_artifacts.py": UNIT,
    "test_artifacts.py::test_training_experiment_opens_on_training_runs": INTEGRATION,
    "test_backfill_window.py": FLOW,
    "test_briefs_flow.py": FLOW,
    "test_briefs_guardrails.py": UNIT,
    "test_briefs_inputs.py": UNIT,
    "test_briefs_llm.py": INTEGRATION,  # an OpenAI-compatible stub server over HTTP
    "test_briefs_llm.py::test_backoff_grows_is_jittered_and_capped": UNIT,
    "test_briefs_llm.py::test_budget_tracker_reserves_and_settles": UNIT,
    "test_briefs_llm.py::test_limiter_reserves_evenly_spaced_slots": UNIT,
    "test_briefs_llm.py::test_limiter_send_log_caps_any_minute": UNIT,
    "test_briefs_llm.py::test_limiter_send_log_caps_any_one_second_window": UNIT,
    "test_briefs_llm.py::test_price_table_and_override": UNIT,
    "test_briefs_llm.py::test_provider_resolution": UNIT,
    "test_briefs_llm.py::test_rules_provider_uses_its_own_key_suffix": UNIT,
    "test_briefs_prompt.py": UNIT,
    "test_briefs_rules.py": UNIT,
    "test_briefs_safety.py": UNIT,
    "test_briefs_service.py": UNIT,
    "test_briefs_store.py": UNIT,
    "test_briefs_store.py::test_postgres_keeps_a_long_unicode_athlete_id": INTEGRATION,
    "test_briefs_store.py::test_postgres_url_works": INTEGRATION,
    "test_cli_errors.py": INTEGRATION,  # the real CLI in subprocesses
    "test_cli_errors.py::test_prefect_server_ends_with_a_killed_cli": FLOW,
    "test_cli_project.py": INTEGRATION,  # imports the flows; one fresh interpreter
    "test_config.py": UNIT,
    "test_dask_runner.py": FLOW,
    "test_data_notes.py": UNIT,
    "test_export_shipping.py": UNIT,
    "test_export_torch.py": INTEGRATION,
    "test_export_xgboost.py": INTEGRATION,
    "test_families.py": UNIT,
    "test_families.py::test_toy_family_train_gate_register_export_and_sign": INTEGRATION,
    "test_features.py": UNIT,
    "test_features_nets.py": UNIT,
    "test_flow_lifecycle.py": FLOW,
    "test_flow_sources.py": FLOW,
    "test_flow_weekly.py": FLOW,
    "test_gates.py": UNIT,
    "test_ids.py": UNIT,
    "test_lifecycle_repair.py": INTEGRATION,
    "test_manual_review_flow.py": FLOW,
    "test_models_injury.py": UNIT,
    "test_models_injury.py::test_train_injury_models_end_to_end": INTEGRATION,
    "test_models_recovery.py": UNIT,
    "test_models_recovery.py::test_population_fitted_once_and_shared_by_chunks": INTEGRATION,
    "test_models_recovery.py::test_population_rider_ships_the_population_model": INTEGRATION,
    "test_models_zones.py": UNIT,
    "test_models_zones.py::test_quantized_zone_packages_are_at_most_half_the_float_one":
        INTEGRATION,
    "test_monitoring.py": UNIT,
    "test_monitoring.py::test_monitoring_flow_flags_only_the_athlete_whose_physiology_changed":
        FLOW,
    "test_ota.py": UNIT,
    "test_production_backends.py": INTEGRATION,
    "test_production_backends.py::test_prefect_server_on_postgres_runs_a_flow": FLOW,
    "test_registry.py": INTEGRATION,
    "test_registry_cli.py": UNIT,
    "test_registry_cli.py::test_review_lists_refuses_mistakes_and_records_a_rejection":
        INTEGRATION,
    "test_report.py": UNIT,
    "test_rerun_skip.py": FLOW,
    "test_review.py": INTEGRATION,
    "test_rollout.py": INTEGRATION,
    "test_schedules.py": FLOW,
    "test_simulate.py": UNIT,
    "test_simulate.py::test_simulate_cli_history_ends_today_so_train_keeps_every_athlete":
        INTEGRATION,
    "test_sources_common.py": UNIT,
    "test_sources_factory.py": UNIT,
    "test_sources_fixtures.py": UNIT,
    "test_sources_fixtures.py::test_real_shaped_exports_train": FLOW,
    "test_sources_generic_csv.py": UNIT,
    "test_sources_intervals.py": UNIT,
    "test_sources_pmdata.py": UNIT,
    "test_sources_postgres.py": INTEGRATION,
    "test_split.py": UNIT,
    "test_tiers.py": UNIT,
    "test_tiers.py::test_guard_refuses_prefect_core_ml_and_postgres": INTEGRATION,
    "test_training_load.py": UNIT,
    "test_tuning.py": UNIT,
    "test_ui_logs.py": FLOW,
    "test_validation.py": UNIT,
    "test_validation.py::test_a_full_week_validates_in_seconds": INTEGRATION,
    "test_zones_calc.py": UNIT,
}
TIER_NAMES = (UNIT, INTEGRATION, FLOW)
_TESTS_DIR = Path(__file__).resolve().parent


def _file_tiers(name: str) -> set[str]:
    """Every tier the tests of one file (``test_x.py``) can have."""
    return {tier for key, tier in TIERS.items() if key == name or key.startswith(name + "::")}


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m`` naming tiers only (``unit``, ``not flow``...): a test file with no test of a
    selected tier is not even imported, so the unit tier does not pay for importing
    MLflow, Prefect or torch test modules."""
    expr = config.getoption("markexpr", "") or ""
    path = Path(collection_path)
    if not expr or path.suffix != ".py" or path.parent != _TESTS_DIR:
        return None
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)) - {"and", "or", "not"}
    tiers = _file_tiers(path.name)
    if not tiers or not words <= set(TIER_NAMES):
        return None  # unassigned files fail in collection; other markers: collect all
    compiled = Expression.compile(expr)
    if any(compiled.evaluate(lambda name, t=tier: name == t) for tier in tiers):
        return None
    return True


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its one tier from ``TIERS``; an unassigned file is an error."""
    missing: set[str] = set()
    for item in items:
        name = item.path.name
        func = getattr(item, "originalname", None) or item.name.split("[")[0]
        tier = TIERS.get(f"{name}::{func}", TIERS.get(name))
        if tier is None:
            missing.add(name)
            continue
        given = [m.name for m in item.iter_markers() if m.name in TIER_NAMES]
        if given:
            raise pytest.UsageError(f"{item.nodeid} marks its own tier {given}: tiers are "
                                    "assigned in tests/conftest.py TIERS only")
        item.add_marker(getattr(pytest.mark, tier))
    if missing:
        raise pytest.UsageError(
            "test files without a tier (add them to TIERS in tests/conftest.py): "
            + ", ".join(sorted(missing)))
    stale = sorted({key.split("::")[0] for key in TIERS}
                   - {p.name for p in _TESTS_DIR.glob("test_*.py")})
    if stale:
        raise pytest.UsageError("TIERS in tests/conftest.py names test files that do not "
                                "exist (renamed?): " + ", ".join(stale))


def _forbidden_fixtures(item: pytest.Item) -> None:
    """A unit test may not ask for a fixture that starts a forbidden service."""
    for fixture, what in unit_guard.FORBIDDEN_FIXTURES.items():
        if fixture in getattr(item, "fixturenames", ()):
            raise unit_guard.TierViolation(
                f"unit-tier test {item.nodeid} uses {what}; move it to the 'flow' tier "
                "(tests/conftest.py TIERS)")


def _guarded(item: pytest.Item):
    """Around each phase of a unit test (fixtures of every scope included): MLflow
    stores, Core ML, Prefect and PostgreSQL raise ``TierViolation``."""
    if item.get_closest_marker(UNIT) is None:
        yield
        return
    mp = pytest.MonkeyPatch()
    remove = unit_guard.guard(item.nodeid, mp)
    try:
        yield
    finally:
        remove()
        mp.undo()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    if item.get_closest_marker(UNIT) is not None:
        _forbidden_fixtures(item)
    yield from _guarded(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    yield from _guarded(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    yield from _guarded(item)


@pytest.fixture
def veloready_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh VELOREADY_HOME for one test: data/, mlflow/ and OTA output go under it."""
    monkeypatch.setenv("VELOREADY_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API (temporary database) for every flow test of the session.

    Starting it costs 10-60 s on a busy 2-core machine, so it is shared.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything imported by now (torch, pandas, GX, Prefect, MLflow: about a million
    objects) leaves the cyclic garbage collector's reach: its full collections during the
    tests walked them again and again (test_validation + test_ids + test_models_recovery:
    28 s user CPU before, 24 s after). Objects the tests create are collected as usual."""
    import gc

    gc.collect()
    gc.freeze()
