#!/usr/bin/env bash
# Fresh machine -> set-up + the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Tests that need PostgreSQL use the real server on 127.0.0.1:5432; start it if it is
# installed but stopped (they skip with a clear message if it still cannot be reached).
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start \
      >/dev/null 2>&1 || echo "test.sh: could not start PostgreSQL; its tests will skip" >&2
  fi
fi
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# Static checks first (seconds; each prints what it found): style and complexity, the
# import-layer contract (.importlinter), types.
.venv/bin/ruff check src flows tasks tests bench scripts
.venv/bin/lint-imports --no-cache
.venv/bin/mypy
exec .venv/bin/python -m pytest --cov=veloready_pipeline --cov-report=term:skip-covered "$@"
