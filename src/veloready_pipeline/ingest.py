"""Ingest: the configured source (or the synthetic default) into canonical rows,
validated in the run's training window and cut into the batch the families train on.

Plain Python (no Prefect): the weekly flow's ingest and validate tasks wrap these, the
CLI uses them to refuse a bad window before any flow starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from veloready_pipeline.config import Settings, SourceSettings
from veloready_pipeline.logs import get_logger
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


@dataclass
class TrainingBatch:
    """The athletes a run trains, after validation, the as-of cut and ``athlete_ids``.

    ``frame``: their rows; ``quarantined``: athlete -> the first failed check (withheld);
    ``skipped``: athlete -> why (no rows in the window); ``data_notes``: athlete -> notes;
    ``digest``: `data_digest` of ``frame`` (lineage and the re-run fingerprint).
    """

    frame: pd.DataFrame
    quarantined: dict[str, str]
    skipped: dict[str, str]
    data_notes: dict[str, list[dict[str, Any]]]
    note_counts: dict[str, int]
    window: dict[str, Any]
    digest: str


def first_failure(report: Any) -> str:
    """A quarantined athlete's summary reason: the first failed check."""
    fails = getattr(report, "failures", [])
    if not fails:
        return "quarantined"
    f = fails[0]
    return f"quarantined: {f.get('column')} / {f.get('rule')}: {f.get('detail')}"


def select_batch(ingested: IngestResult, outcome: Any, as_of: str | None,
                 since: str | None, athlete_ids: Sequence[str] | None) -> TrainingBatch:
    """The training batch of a validation ``outcome``; `NoDataError` (naming the data's
    dates) when no athlete is left to train."""
    def wanted(aid: str) -> bool:
        return not athlete_ids or aid in athlete_ids

    frame = select_athletes(cut_as_of(outcome.clean, as_of), athlete_ids)
    log.info("validated %d athletes: %d quarantined, %d training", outcome.n_athletes,
             len(outcome.quarantined), frame["athlete_id"].nunique())
    if frame.empty:  # nothing to train: say why, naming the data's dates
        raise NoDataError(no_rows_message(ingested.frame, outcome.clean, as_of, athlete_ids,
                                          since, len(outcome.quarantined)))
    return TrainingBatch(
        frame=frame,
        quarantined={a: first_failure(r) for a, r in outcome.quarantined.items() if wanted(a)},
        skipped={a: why for a, why in outcome.skipped.items() if wanted(a)},
        data_notes={a: n for a, n in outcome.data_notes.items() if wanted(a)},
        note_counts=outcome.note_counts(),
        window=outcome.window,
        digest=data_digest(frame),
    )
