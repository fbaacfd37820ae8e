"""The CLI finds the project's flows/ and runs a flow by entrypoint, never by import.

`veloready_pipeline.cli.project` resolves ``flows/<module>.py:<function>`` against the
project root (VELOREADY_HOME, the checkout of the package, the folder it was installed
from, the working directory) and imports ``flows.<module>`` by name, so the flow the
command runs is the one ``import flows.<module>`` gives (one module object).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from veloready_pipeline.cli import app, project
from veloready_pipeline.cli.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_library_imports_no_flows_tasks_or_deployments() -> None:
    src = ROOT / "src" / "veloready_pipeline"
    offenders = [
        f"{path.relative_to(ROOT)}:{n}" for path in sorted(src.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if line.lstrip().startswith(("from flows", "import flows", "from tasks",
                                     "import tasks", "from deployments",
                                     "import deployments"))]
    assert offenders == []


def test_the_loaded_flow_is_the_imported_one() -> None:
    from flows.monitoring import daily_monitoring

    assert project.load_flow("flows/monitoring.py:daily_monitoring") is daily_monitoring


def test_a_fresh_process_imports_the_flow_by_name_from_the_checkout(tmp_path: Path) -> None:
    # Neither the working directory nor the Python path holds flows/: the package's
    # checkout does (src/veloready_pipeline).
    script = (
        "import sys\n"
        "from veloready_pipeline.cli.project import load_flow\n"
        "f = load_flow('flows/monitoring.py:daily_monitoring')\n"
        "m = sys.modules['flows.monitoring']\n"
        "print(m.daily_monitoring is f, m.__file__)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VELOREADY_")}
    env.update(PYTHONPATH=str(ROOT / "src"), VELOREADY_HOME=str(tmp_path),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    same, where = proc.stdout.split()
    assert same == "True" and Path(where) == ROOT / "flows" / "monitoring.py"


def test_velo_home_holding_flows_comes_first(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text("")
    monkeypatch.setenv("VELOREADY_HOME", str(tmp_path))
    assert project.project_root() == tmp_path.resolve()
    monkeypatch.setenv("VELOREADY_HOME", str(tmp_path / "flows"))  # no flows/ inside
    assert project.project_root() != tmp_path.resolve()


def test_no_flows_folder_is_one_line_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("VELOREADY_HOME", str(home))
    monkeypatch.setattr(project, "candidates", lambda: [("the working directory", home)])
    with pytest.raises(UserError, match="cannot find the project's flows/ folder"):
        project.project_root()
    summary = tmp_path / "summary.json"
    with pytest.raises(SystemExit) as exc:
        app(args=["train", "--summary-json", str(summary)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot find the project's flows/")
    body = json.loads(summary.read_text())
    assert body["status"] == "not_started" and "flows/ folder" in body["reason"]
