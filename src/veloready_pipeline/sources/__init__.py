"""Data sources: build the configured one, or tell which one a path is.

``make_source(settings.source)`` returns an object with ``load() -> SourceResult``.
With ``name: auto`` the source is detected from the path, in this order:

1. a PostgreSQL URL (``postgresql[+driver]://...`` or ``postgres://...``) -> ``postgres``;
2. a mapping file is configured -> ``generic_csv`` (an explicit mapping wins over
   any guess from the file's header);
3. a folder in the PMData layout (``pXX/pmsys/wellness.csv``, or one participant's
   folder) -> ``pmdata``;
4. a CSV file, or a folder whose CSV files all have, an intervals.icu wellness header
   (``date`` plus fields such as ``restingHR``, ``hrv``, ``sleepSecs``; a UTF-8 BOM is
   fine) -> ``intervals``; the folder may also hold intervals.icu activities exports
   (``activities.csv`` beside ``wellness.csv``, as the site exports them), and a folder
   without CSV files of its own may hold one such folder per athlete;
5. Parquet files, or CSV files with ``athlete_id`` and ``date`` columns -> ``canonical``
   (only the files directly in the folder: a sub-folder such as a simulation's
   ``truth/`` is not data).

Anything else is an error that says what was found and how to choose a source.
"""

from __future__ import annotations

from pathlib import Path

from veloready_pipeline.config import SourceSettings
from veloready_pipeline.sources.base import ParseIssue, Source, SourceResult
from veloready_pipeline.sources.canonical import CanonicalFileSource
from veloready_pipeline.sources.common import decode_file, refuse_empty_file
from veloready_pipeline.sources.generic_csv import GenericCsvSource
from veloready_pipeline.sources.intervals import (
    IntervalsSource,
    looks_like_intervals,
    looks_like_intervals_activities,
)
from veloready_pipeline.sources.pmdata import PMDataSource, find_participants
from veloready_pipeline.sources.postgres import PostgresSource, is_database_url

__all__ = [
    "CanonicalFileSource",
    "GenericCsvSource",
    "IntervalsSource",
    "PMDataSource",
    "ParseIssue",
    "PostgresSource",
    "Source",
    "SourceResult",
    "SourceDetectionError",
    "detect_source_name",
    "make_source",
]


class SourceDetectionError(ValueError):
    """The source could not be told from the path (message says what was seen)."""


def _csv_header(path: Path) -> list[str]:
    text, _ = decode_file(path)
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = max((",", ";", "\t"), key=first.count)
    return [h.strip().strip('"').lstrip("\ufeff") for h in first.split(delimiter)]


def _classify_csv(path: Path) -> str | None:
    header = _csv_header(path)
    if looks_like_intervals(header):
        return "intervals"
    if looks_like_intervals_activities(header):
        return "intervals_activities"
    if "athlete_id" in header and "date" in header:
        return "canonical"
    return None


def detect_source_name(path: str, mapping: str | Path | None = None) -> str:
    """The source name for a path or URL (see the module docstring for the rules).

    Raises:
        SourceDetectionError: when nothing fits; the message lists what was found.
        FileNotFoundError: when a file path does not exist.
    """
    text = str(path).strip()
    if "://" in text:
        if is_database_url(text):
            return "postgres"
        scheme = text.split("://", 1)[0]
        raise SourceDetectionError(
            f"{text.split('@')[-1]!r} is a {scheme!r} URL; only PostgreSQL URLs are detected. "
            "Pass --source postgres to read another SQLAlchemy URL."
        )
    if mapping is not None:
        return "generic_csv"
    p = Path(text)
    if not p.exists():
        raise FileNotFoundError(f"data path {text} does not exist")
    if p.is_dir():
        if find_participants(p):
            return "pmdata"
        parquet = sorted(p.glob("*.parquet"))
        csvs = sorted(p.glob("*.csv"))
        nested = not csvs and not parquet
        if nested:  # one folder per athlete (intervals.icu exports)?
            csvs = sorted(p.glob("*/*.csv"))
        kinds = {str(f.relative_to(p)): _classify_csv(f) for f in csvs}
        if "intervals" in kinds.values() and all(
            k in ("intervals", "intervals_activities") for k in kinds.values()
        ):
            return "intervals"
        if not nested and (parquet or csvs) and all(k == "canonical" for k in kinds.values()):
            return "canonical"
        unknown = [n for n, k in kinds.items() if k is None]
        seen = ", ".join(f"{n}={k or 'unknown'}" for n, k in list(kinds.items())[:8])
        raise SourceDetectionError(
            f"cannot tell the source of folder {text}: "
            + (f"{len(parquet)} parquet, {len(csvs)} csv file(s) of mixed kinds ({seen})"
               if csvs or parquet else "no pXX/pmsys participant folders, no .csv or .parquet")
            + (f"; unrecognised headers in {', '.join(unknown[:5])}" if unknown else "")
            + ". Pass --source NAME (canonical, generic_csv with --mapping, intervals, pmdata)."
        )
    if p.suffix.lower() in (".csv", ".txt", ".tsv"):
        refuse_empty_file(p)
    if p.suffix.lower() == ".parquet":
        return "canonical"
    if p.suffix.lower() in (".csv", ".txt", ".tsv"):
        kind = _classify_csv(p)
        if kind == "intervals_activities":
            return "intervals"  # which then says to give the wellness export
        if kind:
            return kind
        header = _csv_header(p)
        raise SourceDetectionError(
            f"cannot tell the source of {text}: its header ({', '.join(header[:12])}"
            f"{', ...' if len(header) > 12 else ''}) is neither canonical (athlete_id, date, "
            "...) nor an intervals.icu wellness export (date, restingHR, hrv, ...). "
            "Give a mapping file (--mapping) to read it as a generic CSV."
        )
    raise SourceDetectionError(
        f"cannot tell the source of {text}: expected a folder, .csv, .parquet or a "
        "postgresql:// URL"
    )


def make_source(cfg: SourceSettings) -> Source:
    """Build the configured source (detecting it from ``cfg.path`` when ``name`` is auto).

    Raises:
        ValueError: when the settings do not fit the source (e.g. postgres without a
            table or query, generic_csv without a mapping), naming the field.
        SourceDetectionError: when ``auto`` cannot tell the source.
    """
    name: str = cfg.name
    if cfg.path is None and name == "auto" and cfg.mapping is not None:
        name = "generic_csv"  # the mapping's own `files` say where the data are
    if cfg.path is None and not (name == "generic_csv" and cfg.mapping is not None):
        raise ValueError(f"source.path is not set (source.name={name!r}): give a file, "
                         "folder or postgresql:// URL")
    if name == "auto":
        assert cfg.path is not None
        name = detect_source_name(cfg.path, cfg.mapping)
    if name == "postgres":
        if cfg.path is None or not is_database_url(cfg.path):
            raise ValueError(f"source.path must be a SQLAlchemy URL for the postgres source "
                             f"(got {cfg.path!r})")
        return PostgresSource(cfg.path, table=cfg.table, query=cfg.query, mapping=cfg.mapping)
    if cfg.table is not None or cfg.query is not None:
        raise ValueError(f"source.table/source.query only apply to the postgres source, "
                         f"not {name!r}")
    if name == "generic_csv":
        if cfg.mapping is None:
            raise ValueError("source.mapping (a YAML mapping file) is required for generic_csv")
        return GenericCsvSource(cfg.mapping, path=cfg.path)
    if cfg.mapping is not None:
        raise ValueError(f"source.mapping only applies to generic_csv and postgres, not {name!r}")
    assert cfg.path is not None
    if name == "intervals":
        return IntervalsSource(cfg.path)
    if name == "pmdata":
        return PMDataSource(cfg.path)
    if name == "canonical":
        return CanonicalFileSource(cfg.path)
    raise ValueError(f"unknown source name {name!r}")
