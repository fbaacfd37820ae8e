"""A real `prefect server start` for the tests that need one (logs, schedules, PostgreSQL).

One place starts the server in its own process group with analytics and the UI off, waits
for `/health`, and ends the whole group afterwards (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_prefect_server(home: Path, extra_env: dict[str, str] | None = None,
                           strip: tuple[str, ...] = ("PREFECT_", "MLFLOW_"),
                           ) -> Iterator[tuple[str, dict[str, str], Path]]:
    """Yield the API URL, the server's environment and its log file.

    Variables starting with `strip` are left out of the server's environment (a test
    process's own Prefect settings must not leak in); `extra_env` is added after.
    """
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(strip)}
    env |= {"PREFECT_HOME": str(home / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false"} | (extra_env or {})
    log_path = home / "server.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
         "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prefect server did not become healthy"
            time.sleep(0.5)
        yield api, env, log_path
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
