"""The source interface: anything that yields canonical daily rows.

A source reads its own format and returns a `SourceResult`: the canonical frame
(columns from `veloready_pipeline.schema`, one row per athlete per day, not yet
validated) plus every row it could not parse, with file and line, so nothing is
dropped in silence. Validation then applies the canonical range rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pandas as pd


@dataclass(frozen=True)
class ParseIssue:
    """A row (or file) the source could not turn into canonical data."""

    athlete_id: str | None
    file: str
    line: int | None
    column: str | None
    message: str

    def as_dict(self) -> dict[str, object]:
        return {
            "athlete_id": self.athlete_id,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


@dataclass
class SourceResult:
    """What a source returns: canonical rows plus what it could not read."""

    frame: pd.DataFrame
    issues: list[ParseIssue] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # athlete_id -> remark (e.g. no power)


@runtime_checkable
class Source(Protocol):
    """A configured reader of daily athlete rows."""

    name: str

    def load(self) -> SourceResult:
        """Read everything and return canonical rows plus parse issues."""
        ...
