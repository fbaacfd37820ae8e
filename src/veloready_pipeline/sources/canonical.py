"""Canonical Parquet/CSV files: one file for all athletes or a folder of files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from veloready_pipeline.schema import coerce_canonical
from veloready_pipeline.sources.base import ParseIssue, SourceResult

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
                df = pd.read_csv(f, dtype="string", keep_default_na=True, encoding="utf-8-sig")
                df["_line"] = range(2, len(df) + 2)  # header is line 1
            df["_file"] = str(f)
            frames.append(df)
        if not frames:
            raise FileNotFoundError(f"canonical source: no .parquet or .csv under {self.path}")
        raw = pd.concat(frames, ignore_index=True)
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
