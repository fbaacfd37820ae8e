"""The run summary: one row per athlete and family (status, metrics, version,
artifacts), the statuses' counts and the closing line of a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from veloready_pipeline.families import FAMILIES
from veloready_pipeline.lifecycle.manifests import lifecycle_status
from veloready_pipeline.logs import get_logger
from veloready_pipeline.results import ModelResult

log = get_logger(__name__)


def annotate_rows(rows: list[dict[str, Any]], data_notes: dict[str, list[dict[str, Any]]]
                  ) -> None:
    """Give each summary row its athlete's note counts; a skipped row names its gaps."""
    for row in rows:
        notes = data_notes.get(row["athlete_id"], [])
        counts: dict[str, int] = {}
        for n in notes:
            counts[n["kind"]] = counts.get(n["kind"], 0) + int(n["count"])
        row["data_notes"] = counts
        gaps = [n["message"] for n in notes if n["kind"] == "gap"]
        if row.get("status") == "skipped" and gaps and "without data" not in str(row["reason"]):
            row["reason"] = f"{row['reason']} (data: {'; '.join(gaps)})"


def summary_rows(
    results: Iterable[ModelResult],
    outcomes: dict[tuple[str, str], Any],
    exports: dict[tuple[str, str], dict[str, Any]],
    quarantined: dict[str, str],
    families: Sequence[str],
    manifests: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One row per athlete and family with status, metrics, version and artifacts.

    With ``manifests`` (athlete -> signed manifest path, from the publish stage) a
    registered version's status follows `lifecycle_status`; without, every version
    counts as ``registered`` (callers that never publish).
    """
    rows: list[dict[str, Any]] = []
    for aid, reason in sorted(quarantined.items()):
        for fam in families:
            rows.append({"athlete_id": aid, "family": fam, "status": "quarantined",
                         "reason": reason, "metrics": {}, "registry_version": None,
                         "artifacts": {}})
    for r in results:
        key = (r.athlete_id, r.family)
        out = outcomes.get(key)
        reason = r.reason
        if r.status == "skipped":
            status = "skipped"
        elif r.status == "failed":
            status = "failed"
        elif r.passed and out is not None and out.version is not None:
            status, reason = ("registered", out.decision) if manifests is None else \
                lifecycle_status(out, exports.get(key), manifests.get(r.athlete_id))
        else:
            status = "gate_failed"
        metrics: dict[str, float | None] = {
            k: r.metrics.get(k) for k in ("rmse", "mae", "r2", "auroc", "brier", "mae_gain",
                                          "mae_gain_ci_low", "mae_gain_ci_high")
            if k in r.metrics}
        base = {k: v for k, v in r.baselines.items()}
        if FAMILIES.get(r.family).reports_baseline_rmse and base:
            metrics["baseline_rmse"] = min(v for k, v in base.items() if k.endswith("_rmse"))
        record = exports.get(key, {})
        artifacts = {k: v["path"] for k, v in record.get("artifacts", {}).items()}
        if record.get("shipped"):
            artifacts["shipped"] = f"{record['shipped']}:{record.get('quantization')}"
        if record.get("error"):
            artifacts["export_error"] = record["error"]
        if out is not None:
            artifacts |= out.artifacts
        rows.append({
            "athlete_id": r.athlete_id,
            "family": r.family,
            "status": status,
            "reason": reason,
            "metrics": metrics,
            "baselines": base,
            "model_kind": r.extra.get("model_kind"),  # population | personal
            "registry_name": getattr(out, "registered_name", None),
            "registry_version": getattr(out, "version", None),
            "champion": bool(getattr(out, "champion", False)),
            "mlflow_run_id": getattr(out, "run_id", None),
            "n_rows": r.n_rows,
            "data_window": r.data_window,
            "notes": r.notes,
            "artifacts": artifacts,
            "test": _test_block(r),
        })
    rows.sort(key=lambda x: (x["athlete_id"], families.index(x["family"])
                             if x["family"] in families else 99))
    return rows


def _test_block(r: ModelResult) -> dict[str, Any] | None:
    """Test-part predictions kept in the summary (for reports and live monitoring)."""
    if r.test_y is None or r.test_pred is None:
        return None
    block: dict[str, Any] = {
        "dates": list(r.test_dates),
        "y_true": np.round(np.asarray(r.test_y, dtype=float), 4).tolist(),
        "y_pred": np.round(np.asarray(r.test_pred, dtype=float), 4).tolist(),
    }
    if "baseline_score" in r.extra:
        block["baseline_score"] = np.round(
            np.asarray(r.extra["baseline_score"], dtype=float), 4).tolist()
    return block


def status_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of statuses per family."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        fam = out.setdefault(row["family"], {})
        fam[row["status"]] = fam.get(row["status"], 0) + 1
    return out


def counts_text(counts: dict[str, dict[str, int]]) -> str:
    """'recovery: 3 registered, 2 gate failed; zones: ...' (no Python dicts in logs)."""
    return "; ".join(
        f"{fam}: " + ", ".join(f"{n} {status.replace('_', ' ')}"
                               for status, n in sorted(by.items()))
        for fam, by in counts.items()) or "no models"


def closing_text(counts: dict[str, dict[str, int]], rows: list[dict[str, Any]]) -> str:
    """The closing counts; an unchanged family also says what its standing models are."""
    prev: dict[str, dict[str, int]] = {}
    for r in rows:
        if r.get("status") == "unchanged":
            fam = prev.setdefault(r["family"], {})
            fam[r.get("previous_status", "")] = fam.get(r.get("previous_status", ""), 0) + 1
    text = counts_text(counts)
    if prev:
        text += " (unchanged, not retrained: " + "; ".join(
            f"{fam}: " + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(by.items()))
            for fam, by in prev.items()) + ")"
    return text


def merge_rows(rows: list[dict[str, Any]], unchanged: list[dict[str, Any]],
               families: Sequence[str]) -> list[dict[str, Any]]:
    """The run's rows plus the unchanged families' rows, in the summary's order."""
    out = rows + unchanged
    out.sort(key=lambda x: (x["athlete_id"], families.index(x["family"])
                            if x["family"] in families else 99))
    return out


def skipped_rows(skipped: dict[str, str], families: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of athletes validation found no rows for in the training window."""
    return [{"athlete_id": aid, "family": fam, "status": "skipped", "reason": reason,
             "metrics": {}, "registry_version": None, "artifacts": {}}
            for aid, reason in sorted(skipped.items()) for fam in families]


def run_rows(results: Iterable[ModelResult], outcomes: Iterable[Any],
             exports: dict[tuple[str, str], dict[str, Any]], manifests: dict[str, str],
             quarantined: dict[str, str], skipped: dict[str, str],
             unchanged: list[dict[str, Any]], data_notes: dict[str, list[dict[str, Any]]],
             families: Sequence[str]) -> list[dict[str, Any]]:
    """Every row of a run's summary: trained models (their lifecycle status), the rows of
    families a re-run left unchanged, quarantined and skipped athletes; each row with
    its athlete's data-note counts and signed OTA manifest."""
    by_key = {(o.athlete_id, o.family): o for o in outcomes}
    rows = summary_rows(results, by_key, exports, quarantined, families, manifests)
    rows = merge_rows(rows, unchanged, families)
    rows += skipped_rows(skipped, families)
    annotate_rows(rows, data_notes)
    for row in rows:
        if row["athlete_id"] in manifests:
            row["artifacts"]["ota_manifest"] = manifests[row["athlete_id"]]
    return rows


def run_summary(*, run_id: str, started_at: str, finished_at: str, as_of: str | None,
                source: str, data: str, families: Sequence[str],
                batch: Any, rows: list[dict[str, Any]], quarantine_dir: str,
                mlflow_tracking_uri: str, ota_dir: str,
                rerun: dict[str, Any], summary_path: str) -> dict[str, Any]:
    """The run summary JSON of a weekly run (before its report and path are added).

    ``batch``: the run's `ingest.TrainingBatch`; ``rows``: from `run_rows`; ``rerun``:
    the re-run block (unchanged families' flow runs, why the others trained, which
    batches were recorded).
    """
    return {
        "flow_run_id": run_id,
        "started_at": started_at,
        "finished_at": finished_at,
        "as_of": as_of,
        "source": source,
        "data": data,
        "families": list(families),
        "counts": status_counts(rows),
        "quarantined": batch.quarantined,
        "quarantine_dir": quarantine_dir,
        "training_window": batch.window,
        "data_note_counts": batch.note_counts,
        "data_notes": batch.data_notes,
        "mlflow_tracking_uri": mlflow_tracking_uri,
        "ota_dir": ota_dir,
        "rows": rows,
        "rerun": rerun,
        "summary_path": summary_path,
    }
