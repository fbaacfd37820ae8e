#!/usr/bin/env bash
# Fresh machine -> set-up + the main job on the embedded default:
# synthetic athletes, local Prefect, SQLite MLflow under mlflow/, rules-engine briefs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export VELOREADY_HOME="${VELOREADY_HOME:-$PWD}"
exec .venv/bin/veloready main --config "${VELOREADY_CONFIG:-configs/embedded.yaml}" "$@"
