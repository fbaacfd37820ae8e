"""The weekly training flow: every athlete's personal models, gated, registered, shipped.

Stages (each a Prefect task over chunks of athletes):

1. ingest      - the configured source (or synthetic athletes) into the canonical table
2. validate    - Great Expectations; bad athletes quarantined with a report
3. train       - per family and chunk: features, 70/15/15 time split, Optuna, fit, gate
4. register    - MLflow runs for every model; passing ones registered; champion moves
                 only when it beats the current one on the same test data (each chunk
                 as soon as it is trained, while the workers train the next ones)
   review      - every new passing version is a `challenger`; with review_mode manual the
                 run pauses for a reviewer (Prefect UI form or `veloready registry review`)
5. export      - Core ML (+ quantized variants for networks) and ONNX of new versions
6. publish     - signed OTA manifest per athlete advertising each family's champion
7. report      - gate table and evaluation report (Prefect artifacts, MLflow run) and
                 the run summary JSON
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from tqdm import tqdm

from tasks.review import review_challengers, shippable_outcomes
from tasks.runners import make_task_runner, max_in_flight
from tasks.training import (
    export_models,
    fit_population,
    ingest_data,
    publish_ota,
    register_models,
    summarise_run,
    train_family_chunk,
    validate_data,
    write_report,
    write_summary,
)
from veloready_pipeline import ingest, rerun
from veloready_pipeline.config import Settings, load_settings
from veloready_pipeline.families import FAMILIES
from veloready_pipeline.results import ModelResult
from veloready_pipeline.summary import closing_text, counts_text


@dataclass
class RegistryArgs:
    """What registering a chunk needs besides its results (lineage of the whole run)."""

    data_hash: str
    lineage: dict[str, str]
    workdir: Path


@flow(name="train-athlete-chunks")
def train_chunks(frame: Any, families: list[str], settings: Settings,
                 warm_starts: dict[str, dict[str, dict[str, Any]]] | None = None,
                 progress: bool = True, registry: RegistryArgs | None = None,
                 ) -> tuple[list[ModelResult], list[Any]]:
    """Stages 3-4: one training task per family and chunk, each chunk registered when done.

    Training tasks run on the configured runner (Dask workers or a thread); as each
    chunk comes back, this flow's own process logs and registers it in MLflow (one
    writer, safe on SQLite) while the workers train the next chunks, so the registry
    costs no wall time of its own. ``frame`` may come wrapped in `ingest.AthleteRows`
    so the sub-flow's parameters (sent to the Prefect API) hold the table's size, not
    its rows. Without ``registry`` nothing is registered (outcomes are empty).
    """
    if isinstance(frame, ingest.AthleteRows):
        frame = frame.frame
    ids = sorted(frame["athlete_id"].astype(str).unique())
    chunks = ingest.chunk_ids(ids, settings.execution.chunk_size)
    # A population model (recovery's) needs every athlete: one task fits it first (on
    # the runner, like a chunk) and each of the family's chunks gets it. Those chunks go
    # last, so the other families' chunks train while the population is fitted.
    populations = {f: fit_population.submit(f, frame, ids, settings)
                   for f in families if FAMILIES.get(f).fits_population}
    order = [f for f in families if f not in populations] + list(populations)
    jobs = iter([(family, no, chunk) for family in order
                 for no, chunk in enumerate(chunks)])
    in_flight: dict[Any, Any] = {}

    def submit_next() -> None:
        job = next(jobs, None)
        if job is not None:
            family, no, chunk = job
            rows = frame[frame["athlete_id"].isin(chunk)]
            population = _population(populations.get(family))
            in_flight[train_family_chunk.submit(
                family, no, rows, chunk, settings, (warm_starts or {}).get(family),
                population)] = job

    # A bounded window of chunks in flight: each submitted task carries its chunk's
    # rows (here, in the scheduler and on a worker), so submitting all at once would
    # hold the table once per family; with the window memory does not grow with N.
    for _ in range(max_in_flight(settings)):
        submit_next()
    # Chunks arrive one at a time: register each in this process (parallel registry
    # writers would only fight the training workers for the same cores).
    one_writer = settings.model_copy(update={
        "execution": settings.execution.model_copy(update={"local_workers": 1})})
    # The runs already logged under this data hash, carried from chunk to chunk:
    # registering a chunk reads only the runs logged since the previous one.
    known_runs = None
    if registry is not None:
        from veloready_pipeline.lifecycle.registry import KnownRuns

        known_runs = KnownRuns(registry.data_hash)
    results: list[ModelResult] = []
    outcomes: list[Any] = []
    bar = tqdm(total=len(ids) * len(families), desc="athlete models", unit="model",
               file=sys.stderr, disable=not progress)
    while in_flight:
        fut = next(as_completed(list(in_flight)))
        del in_flight[fut]
        submit_next()
        chunk_results = fut.result()
        results.extend(chunk_results)
        if registry is not None:
            done = register_models(chunk_results, one_writer, registry.data_hash,
                                   registry.lineage, registry.workdir, known_runs)
            outcomes.extend(done)
            # Only registered versions are exported later: drop the other models now
            # (the flow process would otherwise hold every trained network until the end).
            keep = {(o.athlete_id, o.family) for o in done if o.version is not None}
            for r in chunk_results:
                if (r.athlete_id, r.family) not in keep:
                    r.model = None
        bar.update(len(chunk_results))
    bar.close()
    results.sort(key=lambda r: (r.athlete_id, r.family))
    outcomes.sort(key=lambda o: (o.athlete_id, o.family))
    return results, outcomes


@flow(name="weekly-training", log_prints=True)
def weekly_training(
    settings: Settings | None = None,
    data: str | None = None,
    source: str | None = None,
    as_of: str | None = None,
    athlete_ids: list[str] | None = None,
    families: list[str] | None = None,
    summary_json: str | None = None,
    progress: bool = True,
    since: str | None = None,
) -> dict[str, Any]:
    """Train, gate, register and ship every athlete's models.

    Args:
        settings: the whole configuration (defaults: YAML file + VELOREADY_* env).
        data: a path or URL overriding the configured source.
        source: the source kind (auto-detected from ``data`` when omitted).
        as_of: train as of this date (YYYY-MM-DD), using only rows up to it.
        athlete_ids: restrict the run to these athletes.
        families: restrict the run to these families.
        summary_json: where to write the run summary (default under reports_dir).
        progress: show a progress bar of athlete models done.
        since: train only on rows from this date (YYYY-MM-DD); the window is also at
            most ``max_history_days`` long.
    """
    logger = get_run_logger()
    settings = settings or load_settings()
    # Every name a registered family, before any work (one line naming the setting).
    fams = FAMILIES.check(list(families or settings.families),
                          "families" if families else "settings families")
    run_id = str(flow_run.get_id() or "local")
    reports = settings.resolve(settings.paths.reports_dir)
    run = {"run_id": run_id, "started_at": dt.datetime.now(dt.UTC).isoformat(),
           "as_of": as_of,
           "summary_path": str(Path(summary_json) if summary_json
                               else reports / f"summary-{run_id}.json")}

    ingested = ingest_data(settings, data, source)                            # 1 ingest
    ingest.check_training_window(ingested.frame, as_of, since)  # names the data's dates
    outcome = validate_data(ingested, settings, as_of, since)                  # 2 validate
    batch = ingest.select_batch(ingested, outcome, as_of, since, athlete_ids)
    run |= {"source": ingested.source, "data": ingested.location}
    # Families whose batch (rows, settings, code) is unchanged since its registered
    # models were trained and shipped are not retrained (see `rerun`).
    plan = rerun.plan(batch.frame, fams, settings, as_of, batch.digest)
    trained = plan.to_train(fams)
    results, outcomes = _train(batch, trained, settings, run, ingested, progress)  # 3-4
    outcomes = review_challengers(outcomes, settings)                          # review
    exports = export_models(0, results, shippable_outcomes(outcomes), settings)  # 5 export
    manifests = publish_ota(outcomes, settings)                                # 6 publish
    summary = summarise_run(run, batch, plan, fams, trained, results, outcomes,  # 7 report
                            exports, manifests, settings)
    report = write_report(summary, reports / run_id, settings)
    summary = write_summary(summary, report, batch)
    logger.info("done: %s; summary at %s", closing_text(summary["counts"], summary["rows"]),
                summary["summary_path"])
    return summary


def _train(batch: ingest.TrainingBatch, families: list[str], settings: Settings,
           run: dict[str, Any], ingested: ingest.IngestResult, progress: bool,
           ) -> tuple[list[ModelResult], list[Any]]:
    """Stages 3-4 on the configured runner: the `train_chunks` sub-flow, registering
    each chunk under the run's lineage as it arrives (nothing when no family trains)."""
    if not families:
        return [], []
    lineage = {"prefect_flow_run_id": run["run_id"], "source": ingested.source,
               "source_location": ingested.location, "as_of": run["as_of"] or ""}
    registry = RegistryArgs(batch.digest, lineage,
                            settings.resolve(settings.paths.reports_dir) / "plots"
                            / run["run_id"])
    return train_chunks.with_options(task_runner=make_task_runner(settings))(
        ingest.AthleteRows.of(batch.frame), families, settings, None, progress, registry)


def _population(future: Any) -> Any:
    """A population task's model; on its failure, each chunk fits one on its own
    athletes (their runs record how many athletes it saw)."""
    if future is None:
        return None
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - logged; the chunks still train
        get_run_logger().warning("population fit failed (%s: %s); each recovery chunk "
                                 "fits its own", type(exc).__name__, exc)
        return None


@flow(name="weekly-training-backfill", log_prints=True)
def weekly_training_backfill(
    start: str,
    end: str,
    every_days: int = 7,
    settings: Settings | None = None,
    data: str | None = None,
    athlete_ids: list[str] | None = None,
    families: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Re-train as of each date from ``start`` to ``end`` (inclusive), every N days.

    Each as-of run sees only rows up to its date, so the registry ends up as it would
    have been had the weekly flow run on those dates.
    """
    logger = get_run_logger()
    settings = settings or load_settings()
    if families:
        FAMILIES.check(families)  # before any as-of run
    window = ingest.data_window(ingest.load_data(settings, data).frame)
    dates, before = ingest.backfill_dates(start, end, every_days, window)
    assert window is not None  # backfill_dates refused a window-less data set
    first, latest = window
    if before:
        logger.warning("backfill: %d as-of date(s) before the data's first day %s skipped "
                       "(%s); the data covers %s..%s", len(before), first,
                       ", ".join(d.isoformat() for d in before), first, latest)
    if dates[-1].isoformat() > latest:
        logger.warning("backfill: as-of dates after the data's last day %s see the same "
                       "rows as %s", latest, latest)
    logger.info("backfill: %d as-of run(s) from %s to %s every %d days (data %s..%s)",
                len(dates), dates[0], dates[-1], every_days, first, latest)
    out = []
    for day in dates:
        summary = weekly_training(settings=settings, data=data, as_of=day.isoformat(),
                                  athlete_ids=athlete_ids, families=families, progress=False)
        out.append({"as_of": day.isoformat(), "counts": summary["counts"],
                    "summary_path": summary["summary_path"]})
        logger.info("backfill as of %s: %s", day, counts_text(summary["counts"]))
    return out

if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    weekly_training()
