"""Plain-Python stage functions the Prefect tasks wrap (no Prefect imports here).

Each function is one stage of the weekly training flow, testable without an
orchestrator: load the data, cut it at the as-of date, split athletes into chunks,
train a family on a chunk, score models for champion comparison, export and publish,
and build the run summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from veloready_pipeline.config import Settings, SourceSettings
from veloready_pipeline.gates import regression_metrics
from veloready_pipeline.logs import get_logger
from veloready_pipeline.results import ModelResult
from veloready_pipeline.sources.base import ParseIssue, SourceResult
from veloready_pipeline.sources.common import NoDataError

log = get_logger(__name__)


@dataclass
class IngestResult:
    """The canonical rows of a run plus where they came from."""

    frame: pd.DataFrame
    issues: list[ParseIssue]
    notes: dict[str, str]
    source: str
    location: str
    extra: dict[str, Any] = field(default_factory=dict)


def synthetic_data_path(settings: Settings) -> Path:
    """Where the embedded default keeps its synthetic athletes."""
    return settings.resolve(settings.paths.data_dir) / "synthetic" / "athletes.parquet"


def ensure_synthetic_data(settings: Settings) -> Path:
    """Simulate the configured synthetic athletes once (deterministic per seed)."""
    from veloready_pipeline.simulate import simulate_athletes, write_simulation

    path = synthetic_data_path(settings)
    truth = path.parent / "truth.json"
    sim = settings.simulator
    start = sim.resolved_start_date()
    want = {"n_athletes": sim.athletes, "days": sim.days, "seed": settings.seed,
            "profile": sim.profile, "start_date": start}
    if path.exists() and truth.exists():
        have = json.loads(truth.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return path
    result = simulate_athletes(n_athletes=sim.athletes, days=sim.days, seed=settings.seed,
                               profile=sim.profile, start_date=start)
    return write_simulation(result, path.parent)


def load_data(settings: Settings, data: str | None = None,
              source_name: str | None = None) -> IngestResult:
    """Read the configured source (or the synthetic default) into canonical rows."""
    from veloready_pipeline.sources import make_source

    cfg = settings.source
    if data is not None or source_name is not None:
        cfg = SourceSettings(**(cfg.model_dump() | {
            "path": data if data is not None else cfg.path,
            "name": source_name or ("auto" if data is not None else cfg.name),
        }))
    if cfg.path is None:
        path = ensure_synthetic_data(settings)
        cfg = SourceSettings(name="canonical", path=str(path))
    _refuse_empty_file(cfg.path)
    source = make_source(cfg)
    result: SourceResult = source.load()
    if result.frame.empty and not result.issues:
        raise NoDataError(
            f"no data: the {getattr(source, 'name', cfg.name)} source found no rows at "
            f"{cfg.path}; nothing to train on")
    ingested = IngestResult(result.frame, list(result.issues), dict(result.notes),
                            getattr(source, "name", cfg.name), str(cfg.path))
    log.info("ingest: %d rows of %d athletes from %s source %s (%s)", len(result.frame),
             _n_athletes(result.frame), ingested.source, ingested.location,
             describe_window(result.frame))
    errors = sum(str(getattr(i, "severity", "error")) == "error" for i in ingested.issues)
    if errors:
        log.warning("ingest: %d rows/values could not be parsed (dropped or masked and "
                    "listed in the data notes)", errors)
    if len(ingested.issues) > errors:
        log.info("ingest: %d source notes (superseded rows, missing-value tokens, ...)",
                 len(ingested.issues) - errors)
    return ingested


def _n_athletes(frame: pd.DataFrame) -> int:
    return int(frame["athlete_id"].nunique()) if "athlete_id" in frame and len(frame) else 0


def data_window(frame: pd.DataFrame) -> tuple[str, str] | None:
    """First and last date in the rows (YYYY-MM-DD), None when there are none."""
    if "date" not in frame or not len(frame):
        return None
    dates = pd.to_datetime(frame["date"], errors="coerce").dropna()
    if dates.empty:
        return None
    return dates.min().date().isoformat(), dates.max().date().isoformat()


def describe_window(frame: pd.DataFrame) -> str:
    """'dates 2026-06-07..2026-12-03' or 'no dated rows'."""
    window = data_window(frame)
    return f"dates {window[0]}..{window[1]}" if window else "no dated rows"


def backfill_dates(start: str, end: str, every_days: int, window: tuple[str, str] | None,
                   ) -> tuple[list[Any], list[Any]]:
    """The as-of dates of a backfill inside the data, and those before it (skipped).

    Raises ValueError for a reversed window and `NoDataError` (naming the data's dates)
    when no as-of date falls on or after the data's first day.
    """
    import datetime as dt

    day, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if last < day:
        raise ValueError(f"backfill end {end} is before start {start}")
    if every_days < 1:
        raise ValueError(f"backfill every_days must be >= 1, not {every_days}")
    if window is None:
        raise NoDataError("backfill: the data holds no dated rows")
    dates = []
    while day <= last:
        dates.append(day)
        day += dt.timedelta(days=every_days)
    first = dt.date.fromisoformat(window[0])
    inside = [d for d in dates if d >= first]
    if not inside:
        raise NoDataError(
            f"backfill {start}..{end}: every as-of date is before the data, which covers "
            f"{window[0]}..{window[1]}; pick dates in that range")
    return inside, [d for d in dates if d < first]


def check_training_window(raw: pd.DataFrame, as_of: str | None, since: str | None) -> None:
    """Refuse (`NoDataError`, naming the data's dates) an as-of date before the data or a
    since date after it, before any validation or training starts."""
    window = data_window(raw)
    if window is None:
        return
    if (as_of is not None and as_of < window[0]) or (since is not None and since > window[1]):
        raise NoDataError(no_rows_message(raw, raw.iloc[:0], as_of, None, since))


def no_rows_message(raw: pd.DataFrame, clean: pd.DataFrame, as_of: str | None,
                    athlete_ids: Sequence[str] | None, since: str | None = None,
                    n_quarantined: int = 0) -> str:
    """Why a training window is empty, with the dates the data does cover."""
    if not len(raw):
        return "no rows to train on: the source returned no rows"
    window = data_window(raw)
    where = f"the data covers {describe_window(raw)} ({_n_athletes(raw)} athletes)"
    if window is not None and as_of is not None and as_of < window[0]:
        return (f"no rows to train on as of {as_of}: {where}; pick an as-of date from "
                f"{window[0]} to {window[1]}")
    if window is not None and since is not None and since > window[1]:
        return (f"no rows to train on since {since}: {where}; pick a --since date before "
                f"{window[1]}")
    if not len(clean) and n_quarantined:
        return (f"no rows to train on: every athlete in the window was quarantined by "
                f"validation ({n_quarantined}); {where}")
    who = f" for athletes {', '.join(athlete_ids)}" if athlete_ids else ""
    span = f"from {since} " if since else ""
    return f"no rows to train on{who} {span}as of {as_of or 'latest'}: {where}"


def _refuse_empty_file(path: str | None) -> None:
    """An empty data file is a user mistake with a one-line reason, not an empty run."""
    if path is None or "://" in path:
        return
    p = Path(path)
    if p.is_file() and not p.read_bytes().strip():
        raise NoDataError(f"data file {p} is empty (0 rows, no header); nothing to train on")


def training_window(settings: Settings, as_of: str | None,
                    since: str | None) -> Any:
    """The run's `validation.TrainingWindow` (as-of, since, ``max_history_days``)."""
    from veloready_pipeline.validation import TrainingWindow

    return TrainingWindow(
        as_of=pd.Timestamp(as_of) if as_of else None,
        since=pd.Timestamp(since) if since else None,
        max_history_days=settings.max_history_days,
    )


def validate_ingested(ingested: IngestResult, settings: Settings, as_of: str | None = None,
                      since: str | None = None, today: Any = None) -> Any:
    """Validate the ingested rows in the run's training window with the configured rules."""
    from veloready_pipeline.validation import validate_frame

    v = settings.validation
    return validate_frame(
        ingested.frame, ingested.issues,
        max_gap_days=v.max_gap_days,
        max_missing_rates=v.max_missing_rates or None,
        tolerances=v.row_tolerance.model_dump(),
        min_history_days=settings.min_history_days,
        window=training_window(settings, as_of, since),
        future_days=v.future_days,
        today=today,
        adapter_notes=ingested.notes,
    )


def data_notes_line(counts: dict[str, int]) -> str:
    """The closing line of a command: every kind of data note, counted."""
    labels = {"masked": "masked values", "dropped": "dropped rows",
              "source": "source notes (superseded/ignored rows)",
              "missing_tokens": "missing-value tokens", "adapter": "adapter notes",
              "sensor": "sensor notes", "gap": "gap notes", "window": "rows outside the window"}
    return ", ".join(f"{counts.get(k, 0)} {label}" for k, label in labels.items())


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


def cut_as_of(frame: pd.DataFrame, as_of: str | None) -> pd.DataFrame:
    """Only rows dated on or before ``as_of`` (a backfill never sees later data)."""
    if as_of is None:
        return frame
    return frame[frame["date"] <= pd.Timestamp(as_of)].copy()


def select_athletes(frame: pd.DataFrame, athlete_ids: Sequence[str] | None) -> pd.DataFrame:
    """Rows of the requested athletes; unknown ids are an error naming them."""
    if not athlete_ids:
        return frame
    known = set(frame["athlete_id"].astype(str).unique())
    unknown = sorted(set(athlete_ids) - known)
    if unknown:
        raise ValueError(f"unknown athlete ids: {', '.join(unknown[:10])}")
    return frame[frame["athlete_id"].isin(list(athlete_ids))].copy()


def chunk_ids(ids: Sequence[str], size: int) -> list[list[str]]:
    """Athletes in chunks: one task per chunk keeps orchestration cost small."""
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


class AthleteRows(BaseModel):
    """The validated rows handed to the training sub-flow, shown by size, never by value.

    A sub-flow's parameters are sent to the Prefect API as JSON (and refused above
    512 KB): 100 athletes x 180 days already weigh ~6 MB. This wrapper keeps the frame
    in memory (tasks still receive their chunk's rows) and serializes as its shape.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    frame: pd.DataFrame = Field(exclude=True, repr=False)
    n_rows: int = 0
    n_athletes: int = 0

    @classmethod
    def of(cls, frame: pd.DataFrame) -> AthleteRows:
        """Wrap a canonical frame."""
        n = int(frame["athlete_id"].nunique()) if "athlete_id" in frame else 0
        return cls(frame=frame, n_rows=len(frame), n_athletes=n)


def data_digest(frame: pd.DataFrame) -> str:
    """A digest of the rows (order-independent within the frame's sort)."""
    cols = sorted(c for c in frame.columns if not c.startswith("_"))
    ordered = frame.sort_values(["athlete_id", "date"])[cols].reset_index(drop=True)
    h = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    return hashlib.sha256(h.tobytes()).hexdigest()[:24]


def fit_population(family: str, frame: pd.DataFrame, athlete_ids: list[str],
                   settings: Settings) -> Any:
    """A family's population model over every athlete of the run, fitted once before
    the chunks (recovery; None for families that fit theirs inside each chunk)."""
    from veloready_pipeline.timing import time_stage

    if family != "recovery":
        return None
    from veloready_pipeline.models.recovery import fit_recovery_population

    with time_stage("train", family=family, athletes=len(athlete_ids), part="population"):
        return fit_recovery_population(frame, athlete_ids, settings)


def train_family(family: str, frame: pd.DataFrame, athlete_ids: list[str],
                 settings: Settings,
                 warm_starts: dict[str, dict[str, Any]] | None = None,
                 population: Any = None) -> list[ModelResult]:
    """Train one family for a chunk of athletes (timed as stage ``train``, see `timing`).

    ``population``: the family's model from `fit_population` (recovery), shared by
    every chunk; without it a recovery chunk fits one on its own athletes.
    """
    from veloready_pipeline.timing import time_stage

    with time_stage("train", family=family, athletes=len(athlete_ids)):
        if family == "recovery":
            from veloready_pipeline.models.recovery import train_recovery_chunk

            results = train_recovery_chunk(frame, athlete_ids, settings, warm_starts,
                                           population)
        else:
            from veloready_pipeline.models.nets import train_net_chunk

            results = train_net_chunk(family, frame, athlete_ids, settings)
    log_verdicts(family, results)
    return results


def log_verdicts(family: str, results: Sequence[ModelResult]) -> None:
    """One line per athlete model (its gate verdict or why there is none) and a tally."""
    tally: dict[str, int] = {}
    for r in results:
        kind = ("passed" if r.passed else "gate failed" if r.status == "trained"
                else r.status)
        tally[kind] = tally.get(kind, 0) + 1
        if r.status == "failed":
            log.warning("%s %s: training failed: %s", family, r.athlete_id, r.reason)
        elif r.status == "trained":  # the verdict's reason starts with passed/failed
            log.info("%s %s: gate %s", family, r.athlete_id, r.reason or kind)
        else:
            log.info("%s %s: %s: %s", family, r.athlete_id, kind, r.reason or "no reason given")
    log.info("train %s: %d athletes: %s", family, len(results),
             ", ".join(f"{n} {k}" for k, n in sorted(tally.items())) or "none")


def score_model(result: ModelResult, model: Any) -> float:
    """Loss of ``model`` on ``result``'s test part (lower is better).

    Used to compare a new model and the current champion on the same test rows.
    """
    if result.test_X is None or result.test_y is None:
        return float("inf")
    if result.model_kind == "xgboost":
        import xgboost as xgb

        booster = model.get_booster() if hasattr(model, "get_booster") else model
        if list(booster.feature_names or []) != result.feature_names:
            raise ValueError("champion uses a different feature set")
        pred = booster.inplace_predict(np.asarray(result.test_X, dtype=np.float32))
        del xgb
        return regression_metrics(result.test_y, pred)["rmse"]
    from veloready_pipeline.models.nets import score_net

    return score_net(result, model)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def shipped_in_manifest(manifest: str | Path | None, name: str, version: str) -> str | None:
    """Why a version is not advertised as champion by a signed manifest (None if it is).

    Checks the manifest's signature file is there and was made for exactly these bytes
    (its ``manifest_sha256``), and that an entry lists ``name`` v``version`` as champion.
    The full cryptographic check is `veloready ota verify`.
    """
    if manifest is None:
        return "no OTA manifest was written for this athlete"
    path = Path(manifest)
    sig = path.with_name(path.name + ".sig")
    try:
        body = path.read_bytes()
        signed = json.loads(sig.read_text(encoding="utf-8")).get("manifest_sha256")
    except (OSError, ValueError) as exc:
        return f"manifest or signature unreadable ({type(exc).__name__}: {exc})"
    if signed != hashlib.sha256(body).hexdigest():
        return "the manifest's signature was made for other bytes (unsigned manifest)"
    for entry in json.loads(body).get("models", []):
        if (entry.get("registry_name") == name and str(entry.get("registry_version")) == version
                and entry.get("role", "champion") == "champion"):
            return None
    return f"the signed manifest does not list {name} v{version} as champion"


def lifecycle_status(out: Any, record: dict[str, Any] | None,
                     manifest: str | None) -> tuple[str, str]:
    """Status and reason of a gate-passing model that has a registry version.

    ``registered`` only for a version that is what it should be at the end of a run:
    the champion, advertised by the athlete's signed manifest, or the challenger awaiting
    review, with its export on disk (what an approval ships). A version that is neither
    is ``not_promoted`` (it lost to the champion, was rejected, or its interrupted
    registration was withdrawn); a champion or challenger without its export or signed
    manifest is ``unshipped`` (the next run repairs it).
    """
    version = str(out.version)
    decision = str(getattr(out, "decision", "") or "")
    champion = out.champion_version is not None and str(out.champion_version) == version
    if not champion and not getattr(out, "challenger", False):
        return "not_promoted", decision
    role = "champion" if champion else "challenger"
    if not record or "error" in record:
        why = (record or {}).get("error", "no export record")
        return "unshipped", f"{role} v{version} has no export ({why}); {decision}"
    if champion:
        missing = shipped_in_manifest(manifest, str(out.registered_name), version)
        if missing:
            return "unshipped", f"champion v{version} is not shipped: {missing}; {decision}"
    return "registered", decision


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
        metrics = {k: r.metrics.get(k) for k in ("rmse", "mae", "r2", "auroc", "brier",
                                                  "mae_gain", "mae_gain_ci_low",
                                                  "mae_gain_ci_high")
                   if k in r.metrics}
        base = {k: v for k, v in r.baselines.items()}
        if r.family in ("recovery", "zones") and base:
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


def counts_text(counts: dict[str, dict[str, int]]) -> str:
    """'recovery: 3 registered, 2 gate failed; zones: ...' (no Python dicts in logs)."""
    return "; ".join(
        f"{fam}: " + ", ".join(f"{n} {status.replace('_', ' ')}"
                               for status, n in sorted(by.items()))
        for fam, by in counts.items()) or "no models"


def status_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of statuses per family."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        fam = out.setdefault(row["family"], {})
        fam[row["status"]] = fam.get(row["status"], 0) + 1
    return out
