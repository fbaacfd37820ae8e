"""The brief store: one row per ``athlete:date(UTC):prompt_version[:suffix]`` key.

Any SQLAlchemy URL works (SQLite under ``data/briefs.db`` by default, PostgreSQL by
configuration). A record is valid for ``briefs.valid_hours`` (24 h) after it was
written: within that window a re-run of the same day reads the record instead of
calling the LLM, so a re-run costs nothing. Changing the prompt version changes the
key, so briefs are regenerated. Each record keeps the inputs, the decision, the text,
its source (``rules`` or ``llm``), why it fell back, the model, token usage and cost.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine

KEY_SEP = ":"
_IN_CHUNK = 500

metadata = sa.MetaData()
briefs_table = sa.Table(
    "daily_briefs",
    metadata,
    # Athlete ids are data (up to 1,000 characters, any script): no length limit here.
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("athlete_id", sa.Text, nullable=False, index=True),
    sa.Column("brief_date", sa.Date, nullable=False, index=True),
    sa.Column("prompt_version", sa.String(32), nullable=False),
    sa.Column("suffix", sa.String(64), nullable=True),
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("provider", sa.String(8), nullable=False),
    sa.Column("fallback_reason", sa.String(200), nullable=True),
    sa.Column("model", sa.String(64), nullable=True),
    sa.Column("decision_kind", sa.String(16), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("decision", sa.JSON, nullable=False),
    sa.Column("violations", sa.JSON, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("prompt_hash", sa.String(32), nullable=True),
    sa.Column("rules_version", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),  # naive UTC
    sa.Column("expires_at", sa.DateTime, nullable=False, index=True),  # naive UTC
)


def make_brief_key(
    athlete_id: str, day: dt.date, prompt_version: str, suffix: str | None = None
) -> str:
    """``athlete:date(UTC):prompt_version[:suffix]``."""
    parts = [athlete_id, day.isoformat(), prompt_version]
    if suffix:
        parts.append(suffix)
    return KEY_SEP.join(parts)


def utc_now() -> dt.datetime:
    """Naive UTC now (what the store keeps, for SQLite and PostgreSQL alike)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class BriefRecord(BaseModel):
    """One stored brief."""

    model_config = ConfigDict(extra="forbid")

    key: str
    athlete_id: str
    brief_date: dt.date
    prompt_version: str
    suffix: str | None = None
    source: Literal["rules", "llm"]
    provider: Literal["rules", "llm"]
    fallback_reason: str | None = None
    model: str | None = None
    decision_kind: str
    text: str
    inputs: dict[str, Any]
    decision: dict[str, Any]
    violations: list[str] = Field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    prompt_hash: str | None = None
    rules_version: str
    created_at: dt.datetime
    expires_at: dt.datetime
    cached: bool = Field(default=False, description="read back from the store, not written now")


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str) -> Engine:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            if url.startswith("sqlite:///") and ":memory:" not in url:
                Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            kwargs: dict[str, Any] = {}
            if url.startswith("sqlite"):
                # Chunks may write from several threads: wait for the lock, don't fail.
                kwargs["connect_args"] = {"timeout": 60, "check_same_thread": False}
            engine = sa.create_engine(url, future=True, **kwargs)
            if url.startswith("sqlite"):

                @sa.event.listens_for(engine, "connect")
                def _wal(dbapi_conn: Any, _record: Any) -> None:
                    cur = dbapi_conn.cursor()
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.close()

            metadata.create_all(engine)
            _ENGINES[url] = engine
        return engine


class BriefStore:
    """Reads and writes brief records at a SQLAlchemy URL (tables made on first use)."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def engine(self) -> Engine:
        return _engine(self.url)

    def location(self) -> str:
        """Where the briefs are, for people: the file for SQLite, else the URL sans password."""
        if self.url.startswith("sqlite:///"):
            return self.url[len("sqlite:///") :]
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def valid(
        self, keys: Iterable[str], now: dt.datetime | None = None
    ) -> dict[str, BriefRecord]:
        """Records for ``keys`` that have not expired at ``now``."""
        now = now or utc_now()
        keys = list(keys)
        out: dict[str, BriefRecord] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(keys), _IN_CHUNK):
                part = keys[i : i + _IN_CHUNK]
                rows = conn.execute(
                    sa.select(briefs_table).where(
                        briefs_table.c.key.in_(part), briefs_table.c.expires_at > now
                    )
                ).mappings()
                for row in rows:
                    out[row["key"]] = BriefRecord(**dict(row), cached=True)
        return out

    def save(self, records: Sequence[BriefRecord]) -> int:
        """Insert or replace records (one transaction)."""
        if not records:
            return 0
        rows = [r.model_dump(mode="python", exclude={"cached"}) for r in records]
        for row in rows:
            row["inputs"] = _jsonable(row["inputs"])
            row["decision"] = _jsonable(row["decision"])
        keys = [r["key"] for r in rows]
        with self.engine.begin() as conn:
            for i in range(0, len(keys), _IN_CHUNK):
                part = keys[i : i + _IN_CHUNK]
                conn.execute(sa.delete(briefs_table).where(briefs_table.c.key.in_(part)))
            conn.execute(sa.insert(briefs_table), rows)
        return len(rows)

    def for_date(self, day: dt.date) -> list[BriefRecord]:
        """Every stored record for one brief date (any prompt version)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(briefs_table)
                .where(briefs_table.c.brief_date == day)
                .order_by(briefs_table.c.athlete_id)
            ).mappings()
            return [BriefRecord(**dict(r), cached=True) for r in rows]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(briefs_table)).scalar_one())


def _jsonable(value: Any) -> Any:
    """Dates and tuples as JSON-friendly values."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value
