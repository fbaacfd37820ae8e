"""Prefect tasks of the weekly training flow: thin wrappers over `veloready_pipeline`.

Each task takes a *chunk* of athletes (never one athlete, trial or tiny step), so
orchestration stays a small share of the run. Retries and timeouts live here.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from veloready_pipeline import ingest, tables, training
from veloready_pipeline.config import Settings
from veloready_pipeline.logs import get_logger
from veloready_pipeline.results import ModelResult
from veloready_pipeline.summary import counts_text

log = get_logger("stages")


@task(name="ingest-data", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def ingest_data(settings: Settings, data: str | None, source: str | None) -> ingest.IngestResult:
    """Read every athlete's daily rows into the canonical table."""
    return ingest.load_data(settings, data, source)


@task(name="validate-data", cache_policy=NO_CACHE)
def validate_data(ingested: ingest.IngestResult, settings: Settings,
                  as_of: str | None = None, since: str | None = None) -> Any:
    """Great Expectations suites in the training window: bad rows dropped or masked and
    reported, unusable athletes quarantined; writes the reports and the data notes."""
    from veloready_pipeline.ids import athlete_key
    from veloready_pipeline.validation import write_quarantine_reports

    outcome = ingest.validate_ingested(ingested, settings, as_of, since)
    folder = settings.resolve(settings.paths.quarantine_dir)
    write_quarantine_reports(outcome, folder)
    log.info("validate: %d athletes checked by the Great Expectations suite, %d quarantined, "
             "%d without rows in the training window; data notes: %s",
             outcome.n_athletes, len(outcome.quarantined), len(outcome.skipped),
             ingest.data_notes_line(outcome.note_counts()))
    for aid, report in sorted(outcome.quarantined.items()):
        fails = getattr(report, "failures", []) or [{}]
        first = fails[0]
        log.warning("validate: %r quarantined (%d failed checks, first: %s / %s); report "
                    "in %s", aid, len(getattr(report, "failures", [])), first.get("column"),
                    first.get("rule"), folder / f"{athlete_key(aid)}.md")
    return outcome


@task(name="fit-population", cache_policy=NO_CACHE, task_run_name="fit-{family}-population")
def fit_population(family: str, frame: pd.DataFrame, athlete_ids: list[str],
                   settings: Settings) -> Any:
    """A family's population model over all athletes (recovery), before its chunks."""
    return training.fit_population(family, frame, athlete_ids, settings)


@task(name="train-family-chunk", cache_policy=NO_CACHE,
      task_run_name="train-{family}-chunk-{chunk_no}")
def train_family_chunk(family: str, chunk_no: int, frame: pd.DataFrame, athlete_ids: list[str],
                       settings: Settings,
                       warm_starts: dict[str, dict[str, Any]] | None = None,
                       population: Any = None) -> list[ModelResult]:
    """Features, split, Optuna tuning, fit and gate for one family on a chunk of athletes."""
    return training.train_family(family, frame, athlete_ids, settings, warm_starts,
                                 population)


@task(name="register-models", cache_policy=NO_CACHE)
def register_models(results: list[ModelResult], settings: Settings, data_hash: str,
                    lineage: dict[str, str], workdir: Path,
                    known_runs: Any | None = None) -> list[Any]:
    """Log every model run to MLflow, register passing ones, move `champion` (one writer).

    ``known_runs`` (a `registry.KnownRuns`) carries the runs already logged under
    ``data_hash`` from one chunk's call to the next.
    """
    from veloready_pipeline.lifecycle.registry import register_results
    from veloready_pipeline.plots import model_svg

    # Test-part plots with axes as hand-written SVG (the MLflow UI previews it), every model.
    outcomes = register_results(results, settings, data_hash=data_hash, lineage=lineage,
                                score_fn=training.score_model, plot_fn=model_svg,
                                workdir=workdir, known_runs=known_runs)
    for out in outcomes:
        if out.version is not None:
            log.info("register: %s v%s%s: %s", out.registered_name, out.version,
                     " (champion)" if out.champion else "", out.decision)
    fams = sorted({r.family for r in results})
    log.info("register %s: %d runs logged to MLflow, %d versions registered, %d reused "
             "from an earlier run", "/".join(fams) or "-", len(outcomes),
             sum(o.version is not None for o in outcomes), sum(bool(o.reused) for o in outcomes))
    return outcomes


@task(name="export-models", cache_policy=NO_CACHE, task_run_name="export-chunk-{chunk_no}")
def export_models(chunk_no: int, results: list[ModelResult], outcomes: list[Any],
                  settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """Core ML + ONNX export (quantized for networks) of newly registered models."""
    from veloready_pipeline.lifecycle.publish import export_registered

    records = export_registered(results, outcomes, settings)
    for (aid, fam), rec in sorted(records.items()):
        if rec.get("error"):
            log.warning("export %s %s failed, not shipped: %s", fam, aid, rec["error"])
    log.info("export: %d registered versions exported (Core ML/ONNX), %d failed",
             sum(not r.get("error") for r in records.values()),
             sum(bool(r.get("error")) for r in records.values()))
    return records


@task(name="publish-ota", cache_policy=NO_CACHE)
def publish_ota(outcomes: list[Any], settings: Settings) -> dict[str, str]:
    """Signed OTA manifests, one per athlete, advertising each family's champion."""
    from veloready_pipeline.lifecycle.publish import publish_manifests

    written = publish_manifests(outcomes, settings)
    log.info("publish: %d signed OTA manifests written to %s", len(written),
             settings.resolve(settings.paths.ota_dir))
    return written


@task(name="write-report", cache_policy=NO_CACHE)
def write_report(summary: dict[str, Any], out_dir: Path, settings: Settings) -> dict[str, Any]:
    """Evaluation report (Markdown + HTML + plots) logged to MLflow; the gate table and
    the report's content as Prefect Markdown artifacts, linking to the MLflow UI."""
    from prefect.artifacts import create_markdown_artifact

    from veloready_pipeline.lifecycle.registry import log_report
    from veloready_pipeline.lifecycle.store import EXPERIMENT, configure_mlflow
    from veloready_pipeline.report import build_report, pooled_metrics, prefect_report_markdown

    paths = build_report(summary, out_dir)
    run_id = log_report(settings, out_dir, summary.get("flow_run_id", "local"))
    experiment = configure_mlflow(settings).get_experiment_by_name(EXPERIMENT)
    exp_id = experiment.experiment_id if experiment is not None else None
    base = settings.ui.mlflow_url
    report_url = tables.mlflow_run_url(base, exp_id, run_id)
    rows, counts = summary["rows"], summary["counts"]
    create_markdown_artifact(
        key="gate-table",
        markdown="# Weekly training gate table\n\n" + tables.counts_markdown(counts)
        + "\n\nVersions and runs link to the MLflow UI at "
        + f"[{base}]({tables.mlflow_experiment_url(base, exp_id) or base})"
        + " (`ui.mlflow_url`); the full evaluation report is the `evaluation-report` "
        "artifact.\n\n"
        + tables.gate_table_markdown(rows, mlflow_url=base, experiment_id=exp_id),
        description=f"Gate verdicts of {len(rows)} athlete models: "
        + counts_text(counts),
    )
    create_markdown_artifact(
        key="evaluation-report", markdown=prefect_report_markdown(summary, report_url),
        description=f"Evaluation report; full page with plots in MLflow run {run_id}")
    log.info("report: %s (MLflow run %s)", paths["html"], report_url or run_id)
    return {"html": str(paths["html"]), "markdown": str(paths["markdown"]),
            "mlflow_run_id": run_id, "mlflow_run_url": report_url,
            "pooled_metrics": pooled_metrics(summary["rows"])}


@task(name="summarise-run", cache_policy=NO_CACHE)
def summarise_run(run: dict[str, Any], batch: ingest.TrainingBatch, plan: Any,
                  families: list[str], trained: list[str], results: list[ModelResult],
                  outcomes: list[Any], exports: dict[tuple[str, str], dict[str, Any]],
                  manifests: dict[str, str], settings: Settings) -> dict[str, Any]:
    """The run summary: every athlete model's row (lifecycle status, metrics, version,
    artifacts, data notes) and the counts; records each cleanly trained family's batch
    for the re-run skip. ``run``: run_id, started_at, as_of, source, data."""
    from veloready_pipeline import rerun
    from veloready_pipeline.summary import run_rows, run_summary

    rows = run_rows(results, outcomes, exports, manifests, batch.quarantined, batch.skipped,
                    plan.rows(), batch.data_notes, families)
    recorded = rerun.save(settings, plan.fingerprints, rows, trained, run["run_id"])
    return run_summary(
        **run, finished_at=dt.datetime.now(dt.UTC).isoformat(), families=families,
        batch=batch, rows=rows,
        quarantine_dir=str(settings.resolve(settings.paths.quarantine_dir)),
        mlflow_tracking_uri=settings.mlflow_tracking_uri(),
        ota_dir=str(settings.resolve(settings.paths.ota_dir)),
        rerun={"unchanged": {f: st.get("flow_run_id") for f, st in plan.unchanged.items()},
               "trained": plan.reasons, "recorded": recorded})


@task(name="write-summary", cache_policy=NO_CACHE)
def write_summary(summary: dict[str, Any], report: dict[str, Any],
                  batch: ingest.TrainingBatch) -> dict[str, Any]:
    """The summary JSON (atomic) with its report, and the data notes as a Prefect artifact."""
    from prefect.artifacts import create_markdown_artifact

    from veloready_pipeline.fsio import atomic_write_text
    from veloready_pipeline.validation import data_notes_markdown

    summary = summary | {"report": report, "pooled": report.get("pooled_metrics", {})}
    atomic_write_text(Path(summary["summary_path"]),
                      json.dumps(summary, indent=2, default=str))
    create_markdown_artifact(
        key="data-notes", markdown=data_notes_markdown(batch.note_counts, batch.data_notes),
        description="Masked values, dropped rows and every other data note of this run",
    )
    return summary
