"""`veloready registry review|rollback`, `veloready ota promote` and `veloready monitor`
through the real entry point (``veloready_pipeline.cli.app``), in process.

User mistakes end in one line on stderr naming the setting, option, athlete or version
(usage mistakes: exit code 2; refusals of the registry: exit code 1). The happy path
runs against a real temporary MLflow SQLite store (integration tier: tests/conftest.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from veloready_pipeline.cli import app


class _Entry:
    """The ``veloready`` command as installed: ``app(args=...)``, so its error handling
    (one line, exit codes) applies, as it does for a user."""

    name = "veloready"

    def main(self, args: list[str], prog_name: str | None = None, **_: Any) -> Any:
        return app(args=list(args), prog_name="veloready")


@pytest.fixture
def veloready(monkeypatch: pytest.MonkeyPatch, veloready_home: Path):
    """Run ``veloready ARGS`` in process; returns the click ``Result``."""
    # The entry point starts a child-process watchdog for `registry`/`monitor`; the test
    # process is not the CLI's, so none is wanted here.
    monkeypatch.setattr(sys.modules[type(app).__module__], "start_child_guard", lambda: None,
                        raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # no server: nothing to resume
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(_Entry(), list(args))  # type: ignore[arg-type]

    return run


def _one_line_error(res: Result, code: int) -> str:
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output
    return lines[0]


# ------------------------------------------------------------- mistakes (no store needed)

@pytest.mark.parametrize("args", [
    ["registry", "review"],
    ["registry", "rollback", "a1", "recovery", "--reason", "x"],
    ["ota", "promote", "a1", "recovery", "--percent", "50"],
    ["monitor"],
])
def test_a_missing_config_file_is_named(veloready, tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "nope.yaml"
    line = _one_line_error(veloready(*args, "--config", str(missing)), 2)
    assert line == f"error: config file {missing} does not exist"


@pytest.mark.parametrize(("env", "value", "expected"), [
    ("VELOREADY_REVIEW_MODE", "sometimes",
     "error: review_mode = 'sometimes' (from VELOREADY_REVIEW_MODE): Input should be 'auto' "
     "or 'manual'"),
    ("VELOREADY_TUNING__NTRIALS", "3",
     "error: unknown setting tuning.ntrials (from VELOREADY_TUNING__NTRIALS); did you mean "
     "'n_trials'?"),
])
def test_a_bad_setting_in_the_environment_is_named(veloready, monkeypatch, env, value,
                                                   expected) -> None:
    monkeypatch.setenv(env, value)
    for args in (["registry", "review"], ["registry", "rollback", "a1", "recovery",
                                          "--reason", "x"], ["monitor"]):
        assert _one_line_error(veloready(*args), 2) == expected


def test_a_bad_config_value_is_named_with_its_file(veloready, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("review_mode: sometimes\n")
    line = _one_line_error(veloready("registry", "review", "--config", str(cfg)), 2)
    assert line.startswith("error: review_mode = 'sometimes'") and str(cfg) in line


@pytest.mark.parametrize(("args", "expected"), [
    (["registry", "rollback", "a1", "recovery"],
     "error: Missing option '--reason'. (see 'veloready registry rollback --help')"),
    (["registry", "rollback", "a1"],
     "error: Missing argument 'family'. (see 'veloready registry rollback --help')"),
    (["ota", "promote", "a1", "recovery"],
     "error: Missing option '--percent'. (see 'veloready ota promote --help')"),
    (["ota", "promote", "a1", "recovery", "--percent", "half"],
     "error: Invalid value for '--percent': Input should be a valid integer, unable to parse "
     "string as an integer (see 'veloready ota promote --help')"),
    (["registry", "frobnicate"],
     "error: No such command 'frobnicate'. (see 'veloready registry --help')"),
    (["monitor", "--as-of", "2026-13-01"],
     "error: Invalid value for --as-of: '2026-13-01' is not a calendar date YYYY-MM-DD "
     "(month must be in 1..12) (see 'veloready monitor --help')"),
])
def test_usage_mistakes_are_one_line_naming_the_option(veloready, args, expected) -> None:
    assert _one_line_error(veloready(*args), 2) == expected


def test_monitor_names_a_missing_data_path(veloready, tmp_path: Path) -> None:
    missing = tmp_path / "none" / "daily.csv"
    line = _one_line_error(veloready("monitor", "--data", str(missing)), 2)
    assert line == (f"error: Invalid value for --data: {missing}: no such file or folder "
                    "(see 'veloready monitor --help')")


def test_refusals_before_the_registry_is_read_exit_1(veloready) -> None:
    line = _one_line_error(veloready("ota", "promote", "a1", "recovery", "--percent", "150"), 1)
    assert line == "promote refused: --percent must be within 1..100, got 150"
    line = _one_line_error(veloready("registry", "rollback", "a1", "recovery", "--reason", " "),
                           1)
    assert line == "rollback refused: a rollback needs a reason (--reason)"


def test_registry_without_a_command_shows_its_commands(veloready) -> None:
    res = veloready("registry")
    assert res.exit_code == 2
    assert "review" in res.stdout and "rollback" in res.stdout
    assert "Usage: veloready registry" in res.stdout


# ----------------------------------------------------- a real MLflow store (integration)

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, Any]:
    """Two recovery challengers (r1, r2) pending review in a SQLite MLflow store."""
    from helpers_data import toy_athlete
    from veloready_pipeline.config import TrainingConfig, load_settings
    from veloready_pipeline.lifecycle.registry import register_results
    from veloready_pipeline.models.recovery import train_recovery_model
    from veloready_pipeline.training import score_model

    root = tmp_path_factory.mktemp("registry-cli")
    values = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
              "artifact_root": (root / "artifacts").as_uri(),
              "registry_prefix": "clitest", "review_mode": "manual"}
    settings = load_settings(tuning={"n_trials": 3}, **values)
    config = TrainingConfig.from_settings(settings, "recovery")
    results = {aid: train_recovery_model(toy_athlete(aid, n=140, seed=seed, noise=2.0), config)
               for aid, seed in (("r1", 3), ("r2", 7))}
    assert all(r.passed for r in results.values()), [r.reason for r in results.values()]
    outcomes = register_results(list(results.values()), settings, data_hash="clitest-d1",
                                lineage={"source": "test"}, score_fn=score_model)
    assert [(o.athlete_id, o.version, o.review_decision) for o in outcomes] == [
        ("r1", "1", "pending"), ("r2", "1", "pending")]
    return {"values": values, "settings": settings, "results": results}


@pytest.fixture
def on_store(veloready, store, monkeypatch):
    for key, value in store["values"].items():
        monkeypatch.setenv(f"VELOREADY_{key.upper()}", value)
    return veloready


def test_review_lists_refuses_mistakes_and_records_a_rejection(on_store, store) -> None:
    from mlflow.tracking import MlflowClient

    listing = on_store("registry", "review")
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert lines[0] == "2 challenger(s) pending review:"
    # one line per challenger (then its recommendation, if any)
    rows = [line for line in lines[1:] if line.split()[0] in ("r1", "r2")]
    for aid, line in zip(("r1", "r2"), rows, strict=True):
        m = store["results"][aid].metrics
        assert line.split()[:4] == [aid, "recovery", "v1", "rmse"], line
        assert f"rmse {m['rmse']:.3f} mae {m['mae']:.3f}" in line
        assert line.endswith("| no champion (app uses rules)")

    # Mistakes: one line naming the athlete or the rule, exit 2, nothing recorded.
    assert _one_line_error(on_store("registry", "review", "--approve", "zz"), 2) == (
        "review refused: no pending challenger for athlete(s): zz (pending: r1, r2)")
    assert _one_line_error(on_store("registry", "review", "--reject", "r2"), 2) == (
        "review refused: a rejection needs a reason")
    assert _one_line_error(on_store("registry", "review", "--approve", "r1", "--reject",
                                    "r1,r2", "--reason", "x"), 2) == (
        "athlete(s) both approved and rejected: r1")
    assert _one_line_error(on_store("registry", "review", "--approve-all", "--reject", "r1",
                                    "--reason", "x"), 2) == (
        "--approve-all approves everything: drop --reject or list approvals")
    assert "2 challenger(s) pending review:" in on_store("registry", "review").stdout

    # A registry refusal names the athlete and version: exit 1, the champion unchanged.
    assert _one_line_error(on_store("registry", "rollback", "r1", "recovery", "--to", "99",
                                    "--reason", "x"), 1) == (
        "rollback refused: athlete r1, family recovery: clitest-recovery-r1 has no champion")
    assert _one_line_error(on_store("ota", "promote", "zz", "recovery", "--percent", "50"),
                           1) == ("promote refused: athlete zz, family recovery: no "
                                  "registered model 'clitest-recovery-zz'")

    # The happy path: r2 rejected with a reason, recorded on its version; r1 still pending.
    res = on_store("registry", "review", "--reject", "r2", "--reason", "residuals drift",
                   "--reviewer", "eve")
    assert res.exit_code == 0, res.output
    assert "r2 recovery v1: rejected" in res.stdout
    assert "no weekly run is paused for review: decisions recorded in the registry" in res.stdout
    uri = store["values"]["tracking_uri"]
    tags = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(
        "clitest-recovery-r2", "1").tags
    assert (tags["review_decision"], tags["reviewer"], tags["reason"], tags["review_source"]) == (
        "rejected", "eve", "residuals drift", "cli")
    again = on_store("registry", "review").stdout.splitlines()
    assert again[0] == "1 challenger(s) pending review:"
    assert [line.split()[0] for line in again[1:] if line.split()[0] in ("r1", "r2")] == ["r1"]
