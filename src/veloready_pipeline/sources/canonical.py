"""Canonical Parquet/CSV files: one file for all athletes or a folder of files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from veloready_pipeline.schema import COLUMNS_BY_NAME, coerce_canonical
from veloready_pipeline.sources.base import ParseIssue, SourceResult
from veloready_pipeline.sources.common import (
    MISSING_TOKENS,
    NoDataError,
    ResolvedIssue,
    missing_token_notes,
)

SUFFIXES = (".parquet", ".csv")


class CanonicalFileSource:
    """Reads canonical-schema Parquet or CSV files.

    Args:
        path: a ``.parquet``/``.csv`` file, or a folder holding such files.
    """

    name = "canonical"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.suffix in SUFFIXES)
        return [self.path]

    def load(self) -> SourceResult:
        if not self.path.exists():
            raise FileNotFoundError(f"canonical source: {self.path} does not exist")
        frames: list[pd.DataFrame] = []
        issues: list[ParseIssue] = []
        for f in self.files():
            if f.suffix == ".parquet":
                df = pd.read_parquet(f)
                df["_line"] = range(len(df))
            else:
                df = _read_csv(f)
                issues += missing_token_notes(
                    df, [c for c in df.columns if c in COLUMNS_BY_NAME], str(f))
                issues += _offset_notes(df, str(f))
                df = df.mask(df.apply(lambda c: c.str.strip().str.lower().isin(
                    list(MISSING_TOKENS))))
                df["_line"] = range(2, len(df) + 2)  # header is line 1
            df["_file"] = str(f)
            frames.append(df)
        if not frames:
            raise FileNotFoundError(f"canonical source: no .parquet or .csv under {self.path}")
        raw = pd.concat(frames, ignore_index=True)
        if raw.empty:
            names = ", ".join(str(f) for f in self.files()[:3])
            raise NoDataError(
                f"canonical source: {names} has a header but no data rows; nothing to train on")
        frame = coerce_canonical(raw)
        if "_coerce_errors" in frame:
            for _, row in frame[frame["_coerce_errors"].str.len() > 0].iterrows():
                for col in str(row["_coerce_errors"]).strip(";").split(";"):
                    issues.append(
                        ParseIssue(
                            athlete_id=None if pd.isna(row.get("athlete_id")) else
                            str(row["athlete_id"]),
                            file=str(row["_file"]),
                            line=int(row["_line"]),
                            column=col,
                            message=f"value {raw.at[row.name, col]!r} is not a valid {col}",
                        )
                    )
        return SourceResult(frame=frame, issues=issues)


def _read_csv(path: Path) -> pd.DataFrame:
    """Every cell as text (missing-value tokens are counted before they become NA)."""
    if not path.read_bytes().strip():
        raise NoDataError(f"canonical source: {path} is empty (no header, no rows)")
    return pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[],
                       encoding="utf-8-sig")


_OFFSET = r"(Z|[+-]\d{2}:?\d{2})$"


def _offset_notes(df: pd.DataFrame, file: str) -> list[ParseIssue]:
    """A note per athlete whose dates carry more than one UTC offset.

    Each row keeps the calendar day of its own local time (`schema.parse_days`), so the
    rows are usable; the note says so, because a day boundary that moves with travel or
    daylight saving is worth knowing about.
    """
    if "date" not in df or "athlete_id" not in df:
        return []
    offsets = df["date"].str.strip().str.extract(_OFFSET, expand=False)
    zoned = offsets.notna()
    if not zoned.any():
        return []
    notes: list[ParseIssue] = []
    frame = pd.DataFrame({"a": df["athlete_id"][zoned], "o": offsets[zoned]})
    for aid, group in frame.groupby("a", sort=True):
        counts = group["o"].value_counts()
        if len(counts) < 2:
            continue
        shown = ", ".join(f"{o} x{n}" for o, n in counts.items())
        notes.append(ResolvedIssue(
            str(aid), file, None, "date",
            f"dates carry {len(counts)} different UTC offsets ({shown}); each row's day is "
            "the calendar day of its own local time"))
    return notes
