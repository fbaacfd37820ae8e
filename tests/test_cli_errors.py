"""User mistakes end fast and short: the real `veloready` CLI in a subprocess.

Each mistake must exit with code 2 and one line on stderr naming the setting, option
or file, with no traceback (``--debug`` adds one), before Prefect, MLflow or torch are
imported; ``train`` writes a summary JSON saying the run did not start and why. Child
processes (Prefect's ephemeral server) end with a parent killed by SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("prefect", "mlflow", "torch", "great_expectations", "xgboost", "coremltools")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VELOREADY_")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
               VELOREADY_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


def veloready(args: list[str], home: Path, cwd: Path | None = None,
              **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "veloready_pipeline.cli", *args],
                          capture_output=True, text=True, cwd=cwd or home,
                          env=_env(home, **env), timeout=120)
    return proc, time.perf_counter() - start


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    (d / "daily.csv").write_text("Day,Rider,HRV,RHR\n2026-01-01,a,55,48\n2026-01-02,a,57,47\n")
    (d / "wrong_column.yaml").write_text(
        "athlete: {column: Rider}\ndate: {column: Day}\n"
        "fields:\n  hrv_ms: HRV\n  resting_hr: {column: Resting HR}\n")
    (d / "unknown_field.yaml").write_text(
        "athlete: {column: Rider}\ndate: {column: Day}\nfields:\n  hrv: HRV\n")
    (d / "bad_mapping.yaml").write_text("athlete: {column: Rider\ndate: x\n")
    (d / "bad.yaml").write_text("tuning:\n  n_trials: [5\n")
    (d / "unknown_key.yaml").write_text("tuning:\n  ntrials: 3\n")
    (d / "a_file").write_text("not a folder\n")
    return d


def _mistakes(d: Path) -> list[tuple[str, list[str], dict[str, str], str]]:
    """(case, args, env, text the one line must contain)."""
    return [
        ("missing data path", ["train", "--data", str(d / "nope.csv")], {},
         f"--data {d / 'nope.csv'}: no such file or folder"),
        ("missing --mapping", ["train", "--data", str(d / "daily.csv")], {},
         f"cannot tell the source of {d / 'daily.csv'}"),
        ("mapping file missing", ["train", "--data", str(d / "daily.csv"), "--mapping",
                                  str(d / "nope.yaml")], {},
         f"--mapping {d / 'nope.yaml'}: no such file"),
        ("wrong column in mapping", ["train", "--data", str(d / "daily.csv"), "--mapping",
                                     str(d / "wrong_column.yaml")], {},
         f"mapping file {d / 'wrong_column.yaml'}: fields.resting_hr 'Resting HR' in the "
         "header of none of 1 file(s)"),
        ("unknown field in mapping", ["train", "--data", str(d / "daily.csv"), "--mapping",
                                      str(d / "unknown_field.yaml")], {},
         f"{d / 'unknown_field.yaml'}: invalid mapping: fields: unknown canonical field(s) "
         "hrv"),
        ("bad YAML mapping", ["train", "--data", str(d / "daily.csv"), "--mapping",
                              str(d / "bad_mapping.yaml")], {},
         f"mapping file {d / 'bad_mapping.yaml'} line 2, column 5: invalid YAML"),
        ("bad YAML config", ["train", "--config", str(d / "bad.yaml")], {},
         f"config file {d / 'bad.yaml'} line 3, column 1: invalid YAML"),
        ("unknown YAML key", ["train", "--config", str(d / "unknown_key.yaml")], {},
         f"unknown setting tuning.ntrials (in config file {d / 'unknown_key.yaml'}); "
         "did you mean 'n_trials'?"),
        ("unknown env name", ["train"], {"VELOREADY_TUNING__NTRIALS": "3"},
         "unknown setting tuning.ntrials (from VELOREADY_TUNING__NTRIALS)"),
        ("bad env value", ["train"], {"VELOREADY_GATES__RECOVERY__RMSE_MAX": "-1"},
         "gates.recovery.rmse_max = '-1' (from VELOREADY_GATES__RECOVERY__RMSE_MAX)"),
        ("unknown family", ["train", "--families", "recovery,speed"], {},
         "--families 'recovery,speed': unknown family 'speed'"),
        ("impossible --as-of", ["train", "--as-of", "2026-02-30"], {},
         "--as-of '2026-02-30' is not a calendar date YYYY-MM-DD"),
        ("VELOREADY_HOME is a file", ["train"], {"VELOREADY_HOME": str(d / "a_file")},
         f"VELOREADY_HOME={d / 'a_file'} is a file, not a folder"),
        ("paths folder is a file", ["train"], {"VELOREADY_PATHS__REPORTS_DIR": str(d / "a_file")},
         f"paths.reports_dir ({d / 'a_file'}) is a file, not a folder"),
        ("unknown option", ["train", "--bogus"], {}, "No such option: --bogus"),
        ("report summary missing", ["report", "--summary-json", str(d / "none.json")], {},
         f"--summary-json {d / 'none.json'}: no such file"),
    ]


CASES = [c[0] for c in _mistakes(Path("/x"))]


@pytest.mark.parametrize("case", CASES)
def test_each_mistake_is_one_line_and_exit_2(case: str, files: Path, home: Path) -> None:
    _, args, env, expected = next(c for c in _mistakes(files) if c[0] == case)
    proc, _ = veloready(args, home, **env)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines == [lines[0]] and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout and proc.stdout == ""


def test_missing_data_path_fails_in_under_5_s(files: Path, home: Path) -> None:
    proc, seconds = veloready(["train", "--data", str(files / "nope.csv")], home)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert seconds < 5.0, f"took {seconds:.1f} s"


def test_debug_adds_the_traceback(files: Path, home: Path) -> None:
    proc, _ = veloready(["train", "--data", str(files / "nope.csv"), "--debug"], home)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: --data ")


def test_mistakes_are_found_before_heavy_imports(files: Path, home: Path) -> None:
    # In one process: every mistake ends in SystemExit(2) with none of the heavy
    # libraries imported (their start-up is what made errors take 35-78 s).
    script = (
        "import sys\n"
        "from veloready_pipeline.cli import app\n"
        f"cases = {json.dumps([c[1] for c in _mistakes(files) if not c[2]])}\n"
        "codes = []\n"
        "for args in cases:\n"
        "    try:\n"
        "        app(args=args)\n"
        "    except SystemExit as exc:\n"
        "        codes.append(exc.code)\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(codes, heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=home, env=_env(home), timeout=120)
    codes, heavy = proc.stdout.strip().split("] [")
    assert set(json.loads(codes + "]")) == {2}, proc.stdout + proc.stderr
    assert heavy == "]", f"heavy modules imported: [{heavy}"


def test_not_started_summary_json(files: Path, home: Path) -> None:
    out = home / "s" / "summary.json"
    proc, _ = veloready(["train", "--data", str(files / "nope.csv"), "--summary-json",
                         str(out)], home)
    assert proc.returncode == 2
    body = json.loads(out.read_text())
    assert body["status"] == "not_started" and body["started"] is False
    assert body["reason"] == proc.stderr.strip().removeprefix("error: ")
    # without --summary-json: under the configured reports folder
    proc, _ = veloready(["train", "--families", "speed"], home)
    written = list((home / "data" / "reports").glob("summary-not-started-*.json"))
    assert proc.returncode == 2 and len(written) == 1
    assert "unknown family 'speed'" in json.loads(written[0].read_text())["reason"]


def test_report_out_defaults_under_home(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    summary = elsewhere / "s.json"
    summary.write_text(json.dumps({"rows": [], "families": [], "flow_run_id": "r1"}))
    proc, _ = veloready(["report", "--summary-json", str(summary)], home, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert (home / "data" / "reports" / "latest" / "report.md").is_file()
    assert not (elsewhere / "data").exists()


def test_report_refuses_a_not_started_summary(home: Path) -> None:
    s = home / "s.json"
    s.write_text(json.dumps({"status": "not_started", "reason": "--data x: no such file"}))
    proc, _ = veloready(["report", "--summary-json", str(s)], home)
    assert proc.returncode == 2
    assert "the run did not start: --data x: no such file" in proc.stderr


# --- children end with their parent -----------------------------------------------

PARENT = """
import subprocess, sys, time
from veloready_pipeline.cli.errors import start_child_guard
if sys.argv[1] == "guard":
    start_child_guard()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("guard", ["guard", "none"])
def test_child_ends_when_parent_is_killed(guard: str, home: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, guard], stdout=subprocess.PIPE,
                              text=True, env=_env(home))
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    time.sleep(2.0)  # the watchdog notes children once a second
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 8
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    survived = _running(child)
    if survived:
        os.kill(child, signal.SIGKILL)
    # the control run shows the test can fail: without the watchdog the child stays
    assert survived == (guard == "none")


@pytest.mark.slow  # a real `veloready train` with Prefect's ephemeral server: ~20-60 s
def test_prefect_server_ends_with_a_killed_cli(home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("simulator: {athletes: 3, days: 120}\ntuning: {n_trials: 2}\n"
                   "families: [recovery]\n")
    env = _env(home, PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)
    cli = subprocess.Popen([sys.executable, "-m", "veloready_pipeline.cli", "train",
                            "--config", str(cfg)], cwd=home, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    deadline = time.monotonic() + 240
    while server is None and time.monotonic() < deadline and cli.poll() is None:
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                stat = (p / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[1]) == cli.pid and b"uvicorn" in cmd:
                server = int(p.name)
        time.sleep(0.5)
    assert server is not None, "the CLI never started Prefect's ephemeral server"
    time.sleep(3)
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    deadline = time.monotonic() + 10
    while _running(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _running(server)
    if alive:
        os.kill(server, signal.SIGKILL)
    assert not alive, "Prefect's server outlived the killed CLI"
