"""Markdown tables of a run summary (Prefect artifacts, the evaluation report) and the
MLflow UI links they carry.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veloready_pipeline.logs import get_logger

log = get_logger(__name__)


MISSING = "—"  # shown for a metric that is undefined (None / NaN) in tables


def cell(x: Any, nd: int = 3) -> str:
    """A table cell: numbers rounded, undefined values as a dash, never ``nan``."""
    if x is None:
        return MISSING
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int | float | np.floating | np.integer):
        v = float(x)
        if not np.isfinite(v):
            return MISSING
        return f"{int(v)}" if v.is_integer() and abs(v) >= 1000 else f"{v:.{nd}f}"
    return md_text(str(x))


def md_text(text: str) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, one line)."""
    return " ".join(text.split()).replace("|", "\\|") or MISSING


# MLflow 3.17's UI picks its GenAI or model-training view from a switch the browser
# remembers (default GenAI) or from this query parameter; links open the training view.
MLFLOW_TRAINING_VIEW = "workflowType=machine_learning"


def mlflow_experiment_url(base: str, experiment_id: str | None) -> str | None:
    """The MLflow UI page of an experiment's runs, in the model-training view."""
    if not experiment_id:
        return None
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?{MLFLOW_TRAINING_VIEW}"


def mlflow_run_url(base: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI page of a run (``#/experiments/<id>/runs/<run_id>``), training view."""
    if not (experiment_id and run_id):
        return None
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
            f"?{MLFLOW_TRAINING_VIEW}")


def mlflow_version_url(base: str, name: str | None, version: Any) -> str | None:
    """The MLflow UI page of a registered model version (``#/models/<name>/versions/<v>``)."""
    if not (name and version is not None):
        return None
    return f"{base.rstrip('/')}/#/models/{name}/versions/{version}"


STATUS_ORDER = ("registered", "gate_failed", "skipped", "quarantined", "failed")


def counts_markdown(counts: dict[str, dict[str, int]]) -> str:
    """Models per family and status as a Markdown table (every status a column)."""
    statuses = [s for s in STATUS_ORDER if any(s in c for c in counts.values())]
    statuses += sorted({s for c in counts.values() for s in c} - set(statuses))
    head = "| family | " + " | ".join(s.replace("_", " ") for s in statuses) + " | total |"
    lines = [head, "|---" * (len(statuses) + 2) + "|"]
    for fam, c in counts.items():
        lines.append(f"| {fam} | " + " | ".join(str(c.get(s, 0)) for s in statuses)
                     + f" | {sum(c.values())} |")
    return "\n".join(lines)


def gate_table_markdown(rows: list[dict[str, Any]], limit: int = 500,
                        mlflow_url: str | None = None,
                        experiment_id: str | None = None) -> str:
    """The gate table as Markdown for the Prefect artifact.

    One row per athlete model: status, gate metrics, the best naive baseline, the
    registered version and the MLflow run (links to the MLflow UI at ``mlflow_url``
    when given) and the full reason. Undefined metrics show as a dash.
    """
    lines = ["| athlete | family | status | rmse | mae | r² | auroc | brier | best baseline "
             "| version | MLflow run | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows[:limit]:
        m = row.get("metrics", {}) or {}
        base = m.get("baseline_rmse")
        if base is None and row.get("baselines"):
            b = row["baselines"]
            base = b.get("base_rate_brier", next(iter(b.values())))
        version, run = row.get("registry_version"), row.get("mlflow_run_id")
        v_text = MISSING
        if version is not None:
            v_text = f"v{version}" + (" (champion)" if row.get("champion") else "")
            url = mlflow_version_url(mlflow_url, row.get("registry_name"), version) \
                if mlflow_url else None
            if url:
                v_text = f"[{v_text}]({url})"
        r_text = MISSING
        if run:
            url = mlflow_run_url(mlflow_url, experiment_id, run) if mlflow_url else None
            r_text = f"[{run[:8]}]({url})" if url else run[:8]
        lines.append(
            f"| {row['athlete_id']} | {row['family']} | {row['status'].replace('_', ' ')} "
            f"| {cell(m.get('rmse'))} | {cell(m.get('mae'))} | {cell(m.get('r2'))} "
            f"| {cell(m.get('auroc'))} | {cell(m.get('brier'))} | {cell(base)} "
            f"| {v_text} | {r_text} | {md_text(str(row.get('reason') or ''))} |"
        )
    if len(rows) > limit:
        lines.append(f"\n{len(rows) - limit} more rows in the run summary JSON and the "
                     "evaluation report")
    return "\n".join(lines)
