#!/usr/bin/env bash
# Create .venv/ and install the project with its pinned dependencies (constraints.txt).
# Idempotent: skips the install when pyproject.toml and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "bootstrap: Python 3.11 is required (found $("$PY" --version 2>&1))" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
STAMP=.venv/.veloready-installed
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch==2.13.0+cpu comes from the machine's local wheel folder (find-links).
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
echo "bootstrap: .venv ready ($(.venv/bin/python --version))"
