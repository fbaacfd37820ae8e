"""Helpers shared by the file and database sources.

Real exports are messy: byte-order marks, Windows code pages, rows with a wrong
number of fields, decimal commas, blanks spelled five different ways. These helpers
read such files *row by row with physical line numbers*, so every value a source
cannot use becomes a `ParseIssue` naming file and line instead of a NaN that nobody
can trace. They also give every source the same finishing step (required columns,
canonical dtypes, sort order) and the same per-athlete "missing sensor" notes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from veloready_pipeline.schema import (
    CANONICAL_COLUMNS,
    CORE_COLUMNS,
    POWER_COLUMNS,
    coerce_canonical,
)
from veloready_pipeline.sources.base import ParseIssue

#: Strings that mean "no value" in the exports we have seen (compared lower-case, after
#: stripping blanks). This is the documented list (README "Missing values"): a cell spelled
#: like one of these is read as missing and *counted* per athlete and column in the run's
#: data notes; any other text in a numeric column (``"abc"``) is a bad value, masked and
#: reported by line. Spreadsheet error codes other than ``#N/A`` are bad values too.
MISSING_TOKENS: frozenset[str] = frozenset(
    {"", "na", "n/a", "n.a.", "nan", "-nan", "null", "none", "nil", "-", "--", "?",
     "#n/a", "#na", "#n/a n/a", "<na>"}
)

#: Encoding tried when a file is not valid UTF-8 (Excel on Windows writes cp1252).
FALLBACK_ENCODING = "cp1252"

_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")


class NoDataError(ValueError):
    """No rows to work on: an empty file, a header without rows, or a run's window that
    holds none (the message names the file or the data's date range). A user mistake:
    the CLI prints it as one line with exit code 2."""


def refuse_empty_file(path: Path) -> None:
    """Raise `NoDataError` for a text data file with no header, or a header and no rows.

    Checked before anything heavy starts, so an empty export is one clear line instead
    of an empty run (or a guess at its format from an empty header).
    """
    text, _ = decode_file(path)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise NoDataError(f"data file {path} is empty (no header, no rows); nothing to train on")
    if len(lines) == 1:
        raise NoDataError(f"data file {path} has a header but no data rows; nothing to train on")


@dataclass(frozen=True)
class ResolvedIssue(ParseIssue):
    """A reported problem the source settled by itself: a warning, not an error.

    Examples: a duplicate report superseded by a later one, an empty form skipped, a
    nap next to the night's sleep. Validation reads ``severity`` and keeps these as
    warnings; a plain `ParseIssue` (no ``severity``) is an error that quarantines its
    athlete, for values the source could not read at all.
    """

    severity: str = "warning"


@dataclass(frozen=True)
class BadValueIssue(ParseIssue):
    """A value a source could not read and left empty in a row it kept, on ``day``.

    For sources whose rows carry no file and line (PMData merges one day from several
    files), so validation can tell a masked value from a dropped row: the day's row is
    in the frame, only this value is missing. ``day`` is ``YYYY-MM-DD``.
    """

    day: str | None = None


@dataclass(frozen=True)
class MissingTokenNote(ResolvedIssue):
    """``count`` cells of one athlete's column spelled as a missing-value token.

    One note per (athlete, file, column), so a long export with thousands of ``NaN``
    cells gives a handful of notes; validation counts ``count`` in the data notes.
    """

    count: int = 0


def missing_token_counts(values: Iterable[object]) -> Counter[str]:
    """How often each non-blank missing-value token occurs among ``values`` (as written)."""
    found: Counter[str] = Counter()
    for v in values:
        if isinstance(v, str) and v.strip() and v.strip().lower() in MISSING_TOKENS:
            found[v.strip()] += 1
    return found


def missing_token_notes(
    raw: pd.DataFrame, columns: Iterable[str], file: str, athlete_column: str = "athlete_id"
) -> list[MissingTokenNote]:
    """One `MissingTokenNote` per athlete and column of ``raw`` (cells as read, strings).

    Blank cells are the ordinary spelling of "no value" and are not counted; every other
    token is (a column full of ``#N/A`` says something about the export).
    """
    notes: list[MissingTokenNote] = []
    if raw.empty:
        return notes
    athletes = (raw[athlete_column] if athlete_column in raw
                else pd.Series([None] * len(raw), index=raw.index))
    for column in columns:
        if column not in raw or column == athlete_column:
            continue
        cells = raw[column].astype("string")
        folded = cells.fillna("").str.strip().str.lower()
        hit = folded.isin(list(MISSING_TOKENS - {""}))
        if not hit.any():
            continue
        frame = pd.DataFrame({"a": athletes[hit].astype("string").fillna("\0"),
                              "t": cells[hit].fillna("").str.strip()})
        for aid, group in frame.groupby("a", sort=True):
            counts = group["t"].value_counts()
            notes.append(_token_note(None if aid == "\0" else str(aid), file, column,
                                     [(str(t), int(n)) for t, n in counts.items()]))
    return notes


def _token_note(athlete: str | None, file: str, column: str,
                counts: list[tuple[str, int]], into: str | None = None) -> MissingTokenNote:
    """The note for one athlete's column: how often each token was written."""
    total = sum(n for _, n in counts)
    shown = ", ".join(f"{tok!r} x{n}" for tok, n in counts)
    target = f" ({into})" if into and into != column else ""
    return MissingTokenNote(
        athlete, file, None, column,
        f"{total} {column} cell(s) spelled as missing ({shown}): read as missing{target}",
        count=total,
    )


def is_missing_token(value: object) -> bool:
    """True for a cell spelled as one of the documented tokens (not for a blank cell)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return bool(text) and text.lower() in MISSING_TOKENS


class MissingTokenTally:
    """Counts missing-value tokens per (athlete, file, column) while a source reads rows.

    The adapters that read cell by cell (generic CSV, PostgreSQL through the same
    mapping, intervals.icu, PMData) call `seen` for each cell of a column they use and
    turn the counts into the same `MissingTokenNote` s the canonical reader makes with
    `missing_token_notes`, so the run's data notes count tokens the same way whatever
    the source. ``into`` names the canonical column a source column is read into.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str | None, str, str, str | None], Counter[str]] = {}

    def seen(self, athlete: str | None, file: str, column: str, value: object,
             into: str | None = None) -> bool:
        """Count ``value`` if it is a token; True when it was one."""
        if not is_missing_token(value):
            return False
        key = (athlete, file, column, into)
        self._counts.setdefault(key, Counter())[str(value).strip()] += 1
        return True

    def notes(self) -> list[MissingTokenNote]:
        """One note per athlete, file and column (sorted by athlete, file, column)."""
        return [
            _token_note(athlete, file, column, counts.most_common(), into)
            for (athlete, file, column, into), counts in sorted(
                self._counts.items(), key=lambda kv: tuple(str(k) for k in kv[0]))
        ]


def severity_of(issue: ParseIssue) -> str:
    """``"warning"`` for a `ResolvedIssue`, else ``"error"``."""
    return str(getattr(issue, "severity", "error"))


def with_athlete(issues: Iterable[ParseIssue], athlete: str | None) -> list[ParseIssue]:
    """The same issues attributed to ``athlete`` (keeping their kind)."""
    return [dataclasses.replace(i, athlete_id=athlete) for i in issues]


@dataclass(frozen=True)
class CsvRow:
    """One data row of a CSV file: its physical line number and its values by column."""

    line: int
    values: dict[str, str]


@dataclass
class CsvTable:
    """A CSV file read for a source: header, rows and what could not be read."""

    path: Path
    header: list[str]
    rows: list[CsvRow]
    issues: list[ParseIssue]


def decode_file(path: Path, encoding: str | None = None) -> tuple[str, list[ParseIssue]]:
    """Read a text file, handling byte-order marks and non-UTF-8 exports.

    UTF-8 (with or without a BOM) and UTF-16 with a BOM are recognised. A file that
    is not valid UTF-8 is decoded as cp1252 and a `ParseIssue` says so (with the line
    of the first bad byte), because a silently mis-decoded name or number is worse than
    a reported one (a warning: the text was read).

    Args:
        path: the file.
        encoding: force an encoding (then no detection and no fallback).
    """
    raw = path.read_bytes()
    if encoding:
        return raw.decode(encoding), []
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), []
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        text = raw.decode(FALLBACK_ENCODING, errors="replace")
        issue = ResolvedIssue(
            athlete_id=None,
            file=str(path),
            line=line,
            column=None,
            message=f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
            f"decoded as {FALLBACK_ENCODING}",
        )
        return text, [issue]


def read_csv_table(
    path: Path, encoding: str | None = None, delimiter: str | None = None
) -> CsvTable:
    """Read a CSV file into rows that remember their physical line numbers.

    Header names are stripped of whitespace (and of a BOM however it got there).
    Blank lines are skipped. A row with more fields than the header is reported and
    skipped (its values cannot be attributed to columns); a row with fewer fields is
    kept with the missing trailing values empty, which is how spreadsheet exports
    write trailing blanks.

    Args:
        path: the CSV file.
        encoding: force an encoding; default detects UTF-8/UTF-16 BOMs, falls back to cp1252.
        delimiter: force a delimiter; default sniffs between ``,``, ``;`` and tab.
    """
    text, issues = decode_file(path, encoding)
    if delimiter is None:
        first = text.split("\n", 1)[0]
        counts = {d: first.count(d) for d in (",", ";", "\t")}
        delimiter = max(counts, key=lambda d: counts[d]) if any(counts.values()) else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[CsvRow] = []
    start = 1
    try:
        for fields in reader:
            end = reader.line_num
            line, start = start, end + 1
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [h.strip().lstrip("\ufeff") for h in fields]
                continue
            if len(fields) > len(header):
                issues.append(
                    ParseIssue(
                        None, str(path), line, None,
                        f"row has {len(fields)} fields but the header has {len(header)}; "
                        "row skipped",
                    )
                )
                continue
            padded = list(fields) + [""] * (len(header) - len(fields))
            rows.append(CsvRow(line, dict(zip(header, padded, strict=True))))
    except csv.Error as exc:
        issues.append(
            ParseIssue(None, str(path), reader.line_num, None,
                       f"CSV syntax error: {exc}; rest of file skipped")
        )
    return CsvTable(path=path, header=header or [], rows=rows, issues=issues)


def is_missing(value: object) -> bool:
    """True for None, NaN and the usual textual spellings of "no value"."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_TOKENS


def parse_number(value: object) -> float:
    """A float from a cell; raises ValueError for text that is not a number.

    Accepts a decimal comma (``7,5``) because European spreadsheet exports use it.
    Missing values return NaN (not an error).
    """
    if is_missing(value):
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    if _DECIMAL_COMMA.match(text):
        text = text.replace(",", ".")
    number = float(text)  # raises ValueError with a clear message
    if math.isinf(number):
        raise ValueError(f"infinite value {value!r}")
    return number


#: Where a row came from; validation shows these next to a failing value.
PROVENANCE_COLUMNS: tuple[str, ...] = ("_file", "_line")


def finish_frame(records: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Canonical frame from per-day records: required columns, dtypes, sorted.

    Every required canonical column exists afterwards (all-null where the source has
    no such data); canonical columns are kept, plus ``_file``/``_line`` when the
    records carry them (one source row per day), so that validation can name the file
    and line of a value that breaks a range rule.
    """
    frame = pd.DataFrame.from_records(list(records))
    for name in CORE_COLUMNS:
        if name not in frame:
            frame[name] = pd.Series([None] * len(frame), dtype="object")
    known = [c.name for c in CANONICAL_COLUMNS if c.name in frame]
    extra = [c for c in PROVENANCE_COLUMNS if c in frame]
    out = coerce_canonical(frame[known])[known]
    if "_file" in extra:
        out["_file"] = frame["_file"].astype("string")
    if "_line" in extra:
        out["_line"] = pd.to_numeric(frame["_line"], errors="coerce").astype("Int64")
    if len(out):
        out = out.sort_values(["athlete_id", "date"], kind="stable")
    return out.reset_index(drop=True)


#: Human names for the sensor groups the families care about.
SENSOR_LABELS: dict[str, str] = {
    "hrv_ms": "no HRV",
    "resting_hr": "no resting HR",
    "sleep_score": "no sleep score",
    "recovery_score": "no recovery/readiness score",
    "tss": "no training load (TSS)",
}


def missing_sensor_notes(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per athlete, which sensor groups are entirely absent (e.g. "no power data")."""
    notes: dict[str, list[str]] = {}
    if frame.empty:
        return notes
    for athlete, rows in frame.groupby("athlete_id", sort=True):
        remarks: list[str] = []
        power = [c for c in POWER_COLUMNS if c in rows]
        if not power or rows[power].isna().all().all():
            remarks.append("no power data")
        for col, label in SENSOR_LABELS.items():
            if col not in rows or rows[col].isna().all():
                if col == "tss" and "load_au" in rows and rows["load_au"].notna().any():
                    label = "training load as load_au (not TSS)"
                remarks.append(label)
        if remarks:
            notes[str(athlete)] = remarks
    return notes


def join_notes(*parts: Mapping[str, list[str]]) -> dict[str, str]:
    """Merge per-athlete remark lists into the ``notes`` strings of a SourceResult."""
    merged: dict[str, list[str]] = {}
    for part in parts:
        for athlete, remarks in part.items():
            bucket = merged.setdefault(athlete, [])
            bucket.extend(r for r in remarks if r not in bucket)
    return {a: "; ".join(r) for a, r in sorted(merged.items()) if r}
