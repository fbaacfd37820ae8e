"""Daily rows from a PostgreSQL table or query (any SQLAlchemy URL works).

For deployments where the app's backend already stores one row per athlete per day.
Give a table (``schema.table`` or ``table``) or a SQL query, never both. Columns with
canonical names (`veloready_pipeline.schema`) are used as they are; other columns are
ignored. When the backend names columns differently, a mapping says how:

- a plain dict ``{canonical_name: column}``, e.g. ``{"athlete_id": "user_id",
  "date": "day", "hrv_ms": "rmssd"}`` (unmapped canonical names still match
  same-named columns), or
- a full generic-CSV mapping (``athlete``/``date``/``fields`` sections, see
  `veloready_pipeline.sources.generic_csv`) for unit conversions and time zones;

either inline or as a YAML file (``source.mapping``). A ``date`` column of SQL type
``date`` is used as the local day; a ``timestamptz`` column comes back in the session's
zone, so give ``date.timezone`` in a full mapping to convert it to the athlete's zone.

Values that cannot be used are reported as `ParseIssue` with ``file`` = the source
(URL without password + table or "query") and ``line`` = the 1-based row number of
the result, which is ordered by athlete and date for a table (add an ORDER BY to a
query for stable numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.exc import NoSuchTableError, OperationalError, ProgrammingError

from veloready_pipeline.sources.base import ParseIssue, SourceResult
from veloready_pipeline.sources.common import finish_frame, join_notes, missing_sensor_notes
from veloready_pipeline.sources.generic_csv import (
    MAPPABLE_FIELDS,
    GenericMapping,
    RawRow,
    collapse_days,
    load_mapping,
    map_rows,
)

#: Seconds to wait for the server before giving up (psycopg2 ``connect_timeout``).
CONNECT_TIMEOUT_S = 10


def normalise_url(url: str) -> str:
    """Accept the ``postgres://`` spelling that Heroku-style URLs use."""
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://"):]
    return url


def is_database_url(text: str) -> bool:
    """True for a PostgreSQL SQLAlchemy URL (``postgresql[+driver]://`` or ``postgres://``)."""
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    return scheme in ("postgres", "postgresql") or scheme.startswith("postgresql+")


class PostgresSource:
    """A table or query through SQLAlchemy, mapped to canonical rows.

    Args:
        url: SQLAlchemy URL, e.g. ``postgresql+psycopg2://user@host:5432/db``.
        table: ``table`` or ``schema.table`` (exclusive with ``query``).
        query: a SQL query returning one row per athlete per day.
        mapping: column mapping (dict, YAML path or `GenericMapping`), see module doc.
    """

    name = "postgres"

    def __init__(self, url: str, table: str | None = None, query: str | None = None,
                 mapping: str | Path | dict[str, Any] | GenericMapping | None = None) -> None:
        if (table is None) == (query is None):
            raise ValueError("postgres source: give exactly one of source.table or source.query")
        self.url = sa.make_url(normalise_url(url))
        self.table = table
        self.query = query
        self.mapping_spec = mapping

    @property
    def where(self) -> str:
        """The source as shown in issues: URL without password, plus table or 'query'."""
        shown = self.url.render_as_string(hide_password=True)
        return f"{shown} table {self.table}" if self.table else f"{shown} query"

    def _engine(self) -> sa.Engine:
        args: dict[str, Any] = {}
        if self.url.get_backend_name() == "postgresql" and self.url.get_driver_name() in (
            "psycopg2", "psycopg"
        ):
            args["connect_timeout"] = CONNECT_TIMEOUT_S
        return sa.create_engine(self.url, connect_args=args, pool_pre_ping=True)

    def fetch(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Column names and rows of the table or query.

        Raises:
            ConnectionError: when the server cannot be reached.
            ValueError: when the table does not exist or the query fails.
        """
        engine = self._engine()
        try:
            with engine.connect() as conn:
                if self.table:
                    schema, _, name = self.table.rpartition(".")
                    try:
                        tbl = sa.Table(name, sa.MetaData(), schema=schema or None,
                                       autoload_with=conn)
                    except NoSuchTableError as exc:
                        raise ValueError(f"postgres: table {self.table!r} not found at "
                                         f"{self.url.render_as_string(hide_password=True)}"
                                         ) from exc
                    stmt: sa.Executable = sa.select(tbl)
                    order = [tbl.c[c] for c in self._order_columns() if c in tbl.c]
                    if order:
                        stmt = sa.select(tbl).order_by(*order)
                else:
                    assert self.query is not None
                    stmt = sa.text(self.query)
                try:
                    result = conn.execute(stmt)
                except ProgrammingError as exc:
                    raise ValueError(f"postgres: {self.where} failed: {exc.orig}") from exc
                columns = list(result.keys())
                rows = [dict(r._mapping) for r in result]
        except OperationalError as exc:
            raise ConnectionError(
                f"postgres: cannot reach {self.url.render_as_string(hide_password=True)}: "
                f"{str(exc.orig).strip()}"
            ) from exc
        finally:
            engine.dispose()
        return columns, rows

    def _resolved_spec(self) -> dict[str, Any] | GenericMapping | None:
        """The mapping as given, with a YAML path read."""
        spec = self.mapping_spec
        if isinstance(spec, (str, Path)):
            loaded = yaml.safe_load(Path(spec).read_text(encoding="utf-8-sig"))
            if not isinstance(loaded, dict):
                raise ValueError(f"{spec}: a mapping file must hold a YAML mapping")
            return loaded
        return spec

    def _order_columns(self) -> list[str]:
        spec = self._resolved_spec()
        if isinstance(spec, GenericMapping) or (isinstance(spec, dict) and "fields" in spec):
            m = load_mapping(spec)
            return [c for c in (m.athlete.column, m.date.column) if c]
        spec = spec or {}
        return [spec.get("athlete_id", "athlete_id"), spec.get("date", "date")]

    def mapping(self, columns: list[str]) -> GenericMapping:
        """The mapping used for the given result columns (identity for canonical names)."""
        spec = self._resolved_spec()
        if isinstance(spec, GenericMapping) or (isinstance(spec, dict) and "fields" in spec):
            return load_mapping(spec)
        renames: dict[str, str] = dict(spec or {})
        unknown = sorted(set(renames) - set(MAPPABLE_FIELDS) - {"athlete_id", "date"})
        if unknown:
            raise ValueError(f"postgres mapping: unknown canonical field(s) {', '.join(unknown)}")
        athlete_col = renames.pop("athlete_id", "athlete_id")
        date_col = renames.pop("date", "date")
        missing = [c for c in (athlete_col, date_col) if c not in columns]
        if missing:
            raise ValueError(
                f"postgres: {self.where} has no column(s) {', '.join(missing)} "
                f"(columns: {', '.join(columns)}); map athlete_id/date in source.mapping"
            )
        fields = {name: col for name, col in renames.items()}
        for name in MAPPABLE_FIELDS:
            if name not in fields and name in columns:
                fields[name] = name
        absent = sorted(col for col in fields.values() if col not in columns)
        if absent:
            raise ValueError(f"postgres: mapped column(s) {', '.join(absent)} not in "
                             f"{self.where} (columns: {', '.join(columns)})")
        if not fields:
            raise ValueError(f"postgres: {self.where} has no canonical columns "
                             f"(columns: {', '.join(columns)}); give source.mapping")
        return load_mapping({"athlete": {"column": athlete_col}, "date": {"column": date_col},
                             "fields": fields})

    def load(self) -> SourceResult:
        columns, rows = self.fetch()
        mapping = self.mapping(columns)
        if mapping.athlete.from_filename not in (None, False):
            raise ValueError("postgres mapping: athlete.from_filename needs files; "
                             "use athlete.column or athlete.constant")
        where = self.where
        mapped = map_rows((RawRow(where, i, r) for i, r in enumerate(rows, start=1)), mapping)
        issues: list[ParseIssue] = list(mapped.issues)
        same_day: dict[str, list[str]] = {}
        records, dup_issues = collapse_days(mapped.records, mapping, same_day)
        issues.extend(dup_issues)
        frame = finish_frame(records)
        return SourceResult(frame=frame, issues=issues,
                            notes=join_notes(missing_sensor_notes(frame), same_day))
