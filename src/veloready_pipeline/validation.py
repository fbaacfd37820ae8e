"""Validate the canonical table with Great Expectations: rows first, athletes last.

Every rule is a genuine Great Expectations expectation, generated from
`veloready_pipeline.schema.CANONICAL_COLUMNS` where it is a schema rule:

* **row suite** (`build_suite`), run once over the rows of the training window:
  required columns exist, ``athlete_id``/``date`` are never null, values sit inside each
  column's physiological range, (athlete_id, date) is unique, and no value failed type
  coercion (the source records those in ``_coerce_errors``);
* **athlete suite** (`build_athlete_suite`), run once over a small table with one row
  per athlete: each row rule's share of bad rows stays within its tolerance (what GX
  calls ``mostly``: tolerance 5 % is ``mostly=0.95``, judged per athlete), no row is
  dated in the future, the required columns' missing rates stay under their limits, and
  enough clean history remains.

**Row-level before athlete-level.** A bad row is dealt with at its own level and
reported with file, line, column, value and rule: an out-of-range or unreadable value
is *masked* (set missing; the rest of the row is kept), a row without a date, a row the
source could not parse and every row of a day that appears twice are *dropped*. The
athlete is trained on what remains. An athlete is quarantined, with a report naming
the column, rule and example rows, only when

* a row rule's bad share passes its tolerance (``validation.row_tolerance``: the share
  of the athlete's readings of that column for masked values, of the athlete's rows for
  dropped ones), e.g. a whole column in the wrong unit;
* a row is dated more than ``validation.future_days`` past the run's as-of date (or
  today): the date column itself is not to be trusted;
* the required target (``recovery_score``) is missing on more than its limit of days
  since its first reading; or
* rows were dropped, or the history was cut after a gap longer than ``max_gap_days``,
  and fewer than ``min_history_days`` clean days remain.

**Training window.** Only rows inside the window are validated and trained on: up to
the as-of date, from ``since`` and at most ``max_history_days`` back from each
athlete's last row. Missing rates and gaps are judged in the window only, and a sparse
or late-starting *optional* sensor is a note (never a quarantine) however the file is
cut. Rows left out by the window are counted, not silently lost.

**Every warning visible.** Masked values, dropped rows, source notes (superseded
duplicates, naps), missing-value tokens, adapter notes, sensor and gap notes end up in
``ValidationOutcome.data_notes``: a list per athlete with a kind, a count, a sentence and,
for masked/dropped rows, every row. Rows without an athlete id and parse issues
without one are listed as ``unattributed``.

Running each suite once over everything (instead of once per athlete) is what keeps a
1,000-athlete x 180-day week in seconds: the expectations report the offending rows
by position (the validated frames carry a plain RangeIndex), and those rows are
mapped back to athletes here. Great Expectations is imported lazily (it takes seconds
to import) and always runs in an ephemeral context, so validation writes nothing to the
working directory or the home directory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from veloready_pipeline.fsio import atomic_write_text
from veloready_pipeline.ids import athlete_key
from veloready_pipeline.schema import (
    CANONICAL_COLUMNS,
    COLUMNS_BY_NAME,
    REQUIRED_COLUMNS,
    Column,
    coerce_canonical,
)
from veloready_pipeline.sources.base import ParseIssue

if TYPE_CHECKING:
    import great_expectations as gx

COERCE_ERRORS = "_coerce_errors"
FILE_COLUMN = "_file"
LINE_COLUMN = "_line"
GAP_COLUMN = "longest_gap_days"
DAYS_AHEAD_COLUMN = "days_ahead"
CLEAN_DAYS_COLUMN = "clean_days"
MAX_EXAMPLES = 5
#: Most rows listed per athlete, rule and column in the data notes (the count is exact).
MAX_LISTED = 1000

# Rule names as they appear in reports. Row rules use the GX expectation type itself;
# the others name the check and carry the GX expectation in the "expectation" field.
RULE_EXISTS = "expect_column_to_exist"
RULE_NOT_NULL = "expect_column_values_to_not_be_null"
RULE_BETWEEN = "expect_column_values_to_be_between"
RULE_UNIQUE = "expect_compound_columns_to_be_unique"
RULE_TYPE = "type"
RULE_PARSE = "parse"
RULE_MISSING = "max_missing_rate"
RULE_GAP = "max_gap_days"
RULE_FUTURE = "future_date"
RULE_HISTORY = "min_history_days"
RULE_ID = "usable_athlete_id"  # veloready_pipeline.ids.id_problem / key_collisions
_RULE_ORDER = {r: i for i, r in enumerate(
    (RULE_ID, RULE_FUTURE, RULE_PARSE, RULE_TYPE, RULE_NOT_NULL, RULE_UNIQUE, RULE_BETWEEN,
     RULE_MISSING, RULE_GAP, RULE_HISTORY)
)}
_UNIQUE_KEY = ("athlete_id", "date")

#: Row rule -> the key of its tolerance in ``validation.row_tolerance``.
TOLERANCE_KEY: dict[str, str] = {
    RULE_BETWEEN: "range",
    RULE_TYPE: "type",
    RULE_PARSE: "parse",
    RULE_NOT_NULL: "missing_date",
    RULE_UNIQUE: "duplicate_date",
}
#: Largest share of bad rows per rule before an athlete is quarantined (GX ``mostly`` =
#: 1 - tolerance). Mirrors `config.RowTolerance`; validate_frame's own default.
DEFAULT_TOLERANCES: dict[str, float] = {
    "range": 0.05, "type": 0.05, "parse": 0.05, "missing_date": 0.05, "duplicate_date": 0.05,
}
#: What happens to a row that breaks a row rule.
ACTION: dict[str, str] = {
    RULE_BETWEEN: "masked", RULE_TYPE: "masked",
    RULE_PARSE: "dropped", RULE_NOT_NULL: "dropped", RULE_UNIQUE: "dropped",
}
#: Kinds of data notes, in the order they are counted and shown.
NOTE_KINDS: tuple[str, ...] = (
    "masked", "dropped", "source", "missing_tokens", "adapter", "sensor", "gap", "window",
)

# athlete -> (rule, column) -> {"n", "examples", "expectation", "extra", ...}
_Failures = dict[str, dict[tuple[str, str], dict[str, Any]]]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrainingWindow:
    """Which days a run validates and trains on.

    Attributes:
        as_of: last day used (rows after it are left out, as a backfill would not have
            seen them); None = each athlete's last row.
        since: first day used; None = no fixed start.
        max_history_days: at most this many calendar days up to each athlete's last
            row (or ``as_of``); None = no limit.
    """

    as_of: pd.Timestamp | None = None
    since: pd.Timestamp | None = None
    max_history_days: int | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready form for run summaries."""
        return {
            "as_of": None if self.as_of is None else f"{self.as_of:%Y-%m-%d}",
            "since": None if self.since is None else f"{self.since:%Y-%m-%d}",
            "max_history_days": self.max_history_days,
            "rule": "per athlete: rows from max(since, last day - max_history_days + 1) "
                    "to the last day, where the last day is the athlete's last row on or "
                    "before as_of",
        }


@dataclass
class AthleteReport:
    """Why one athlete was quarantined, in a form a person can act on.

    Attributes:
        athlete_id: the quarantined athlete.
        failures: one dict per broken rule: ``column``, ``rule``, ``expectation`` (the
            GX expectation that caught it, or None for source parse issues), ``detail``
            (a sentence), ``unexpected_count`` and up to five ``examples`` (``date``,
            ``value``, ``file``, ``line`` and, for parse problems, ``message``). Rules
            that caused the quarantine come first; row problems within their tolerance
            follow (``within_tolerance`` True), so the report is the whole story.
        n_rows: rows this athlete had in the input (all withheld from training).
        warnings: non-fatal remarks, kept so the report is the whole story.
    """

    athlete_id: str
    failures: list[dict[str, Any]]
    n_rows: int = 0
    warnings: list[str] = field(default_factory=list)

    def first_failure(self) -> str:
        """A one-line reason, used by run summaries and the Prefect gate table."""
        if not self.failures:
            return "no failures recorded"
        f = self.failures[0]
        causes = [x for x in self.failures if not x.get("within_tolerance")]
        more = f" (+{len(causes) - 1} more)" if len(causes) > 1 else ""
        return f"{f['column']}: {f['rule']} - {f['detail']}{more}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the report."""
        return {
            "athlete_id": self.athlete_id,
            "n_rows": self.n_rows,
            "failures": self.failures,
            "warnings": self.warnings,
        }

    def to_markdown(self) -> str:
        """A readable per-athlete report naming column, rule and example rows."""
        lines = [
            f"# Quarantine report: athlete `{self.athlete_id}`",
            "",
            f"This athlete's {self.n_rows} row(s) broke "
            f"{sum(not f.get('within_tolerance') for f in self.failures)} validation "
            "rule(s), so no model is trained for them in this run; the other athletes "
            "go on. Fix the rows below at the source and re-run.",
            "",
            "## Failures",
        ]
        for i, f in enumerate(self.failures, start=1):
            lines += [
                "",
                f"### {i}. column `{f['column']}`, rule `{f['rule']}`",
                "",
                f"{f['detail']}.",
            ]
            if f.get("expectation"):
                lines += ["", f"Great Expectations: `{f['expectation']}`"]
            if f["examples"]:
                with_msg = any(e.get("message") for e in f["examples"])
                head = "| date | value | file | line |" + (" message |" if with_msg else "")
                lines += ["", head, "|---|---|---|---|" + ("---|" if with_msg else "")]
                for e in f["examples"]:
                    cells = [e.get("date"), e.get("value"), e.get("file"), e.get("line")]
                    if with_msg:
                        cells.append(e.get("message"))
                    lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
                if f["unexpected_count"] > len(f["examples"]):
                    lines.append(f"\n(first {len(f['examples'])} of {f['unexpected_count']})")
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"


@dataclass
class ValidationOutcome:
    """The validated table split into what may be trained on and what may not.

    Attributes:
        clean: the training-window rows of the athletes that passed, canonical columns
            only, with bad rows dropped and bad values masked (see ``data_notes``).
        quarantined: athlete id -> report, for athletes withheld from training.
        warnings: athlete id -> non-fatal remarks (short gaps, absent sensors, notes).
        n_athletes: distinct athletes seen (in rows or in attributed parse issues).
        unattributed: rows without an athlete id and parse issues without one; they
            cannot be trained on or quarantined, so they are listed instead of dropped.
        n_rows_in: rows in the input frame.
        data_notes: athlete id -> notes (``kind``, ``count``, ``message``, and for
            masked/dropped rows ``rule``, ``column``, ``action`` and every ``rows`` entry
            with date, value, file, line).
        skipped: athlete id -> reason, for athletes with rows but none in the window.
        window: the training window as applied (`TrainingWindow.describe`).
    """

    clean: pd.DataFrame
    quarantined: dict[str, AthleteReport]
    warnings: dict[str, list[str]]
    n_athletes: int
    unattributed: list[dict[str, Any]] = field(default_factory=list)
    n_rows_in: int = 0
    data_notes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)

    def note_counts(self) -> dict[str, int]:
        """Totals per note kind over all athletes (masked values, dropped rows, ...)."""
        counts = dict.fromkeys(NOTE_KINDS, 0)
        for notes in self.data_notes.values():
            for n in notes:
                counts[n["kind"]] = counts.get(n["kind"], 0) + int(n["count"])
        return counts

    def summary(self) -> dict[str, Any]:
        """Counts and one reason per quarantined athlete, for run summaries."""
        return {
            "n_athletes": self.n_athletes,
            "n_clean_athletes": self.n_athletes - len(self.quarantined) - len(self.skipped),
            "n_quarantined": len(self.quarantined),
            "n_skipped": len(self.skipped),
            "n_rows_in": self.n_rows_in,
            "n_rows_clean": len(self.clean),
            "n_rows_quarantined": sum(r.n_rows for r in self.quarantined.values()),
            "quarantined": {a: r.first_failure() for a, r in sorted(self.quarantined.items())},
            "skipped": dict(sorted(self.skipped.items())),
            "n_athletes_with_warnings": len(self.warnings),
            "data_note_counts": self.note_counts(),
            "window": self.window,
            "n_unattributed": len(self.unattributed),
            "unattributed": self.unattributed,
        }


# --------------------------------------------------------------------------- suites


def _row_rules(columns_present: Iterable[str] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(rule, column, expectation kwargs) for the row suite, from the schema."""
    present = None if columns_present is None else set(columns_present)

    def has(name: str) -> bool:
        return present is None or name in present

    rules: list[tuple[str, str, dict[str, Any]]] = []
    for name in REQUIRED_COLUMNS:
        rules.append((RULE_EXISTS, name, {"column": name}))
    for c in CANONICAL_COLUMNS:
        if not has(c.name):
            continue
        if not c.nullable:
            rules.append((RULE_NOT_NULL, c.name, {"column": c.name}))
        if c.min is not None or c.max is not None:
            rules.append(
                (RULE_BETWEEN, c.name, {"column": c.name, "min_value": c.min, "max_value": c.max})
            )
    if all(has(k) for k in _UNIQUE_KEY):
        # A row without a date is the not-null rule's; it duplicates nothing.
        rules.append((RULE_UNIQUE, "date", {"column_list": list(_UNIQUE_KEY),
                                            "ignore_row_if": "any_value_is_missing"}))
    if has(COERCE_ERRORS):
        rules.append((RULE_TYPE, COERCE_ERRORS, {"column": COERCE_ERRORS}))
    return rules


def build_suite(columns_present: Iterable[str] | None = None) -> gx.ExpectationSuite:
    """The row-level suite, generated from `schema.CANONICAL_COLUMNS`.

    Args:
        columns_present: columns of the frame to validate. Column rules are made only
            for present columns (optional columns may be absent entirely), while the
            existence rules for required columns are always there. ``None`` means
            every canonical column plus ``_coerce_errors``.

    Returns:
        A standalone suite; each expectation's ``meta`` carries ``veloready_rule`` and
        ``veloready_column`` so results map back to report lines.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    classes = {
        RULE_EXISTS: gxe.ExpectColumnToExist,
        RULE_NOT_NULL: gxe.ExpectColumnValuesToNotBeNull,
        RULE_BETWEEN: gxe.ExpectColumnValuesToBeBetween,
        RULE_UNIQUE: gxe.ExpectCompoundColumnsToBeUnique,
        # A value that failed coercion is NaN in its column plus a note here, so
        # "types are right" is "this note column is empty".
        RULE_TYPE: gxe.ExpectColumnValuesToBeNull,
    }
    expectations = [
        classes[rule](**kwargs, meta={"veloready_rule": rule, "veloready_column": column})
        for rule, column, kwargs in _row_rules(columns_present)
    ]
    return _make_suite(gx, "veloready_canonical_rows", expectations)


def _make_suite(gx: Any, name: str, expectations: list[Any]) -> gx.ExpectationSuite:
    """A suite that belongs to no data context.

    Passing the expectations to the constructor (rather than `add_expectation`) keeps
    the suite free of any context, so building it never needs or creates one.
    """
    suite = gx.ExpectationSuite(name=name, expectations=expectations)
    if len(suite.expectations) != len(expectations):  # GX logs and skips invalid ones
        raise RuntimeError(f"{name}: Great Expectations rejected some expectations")
    return suite


def build_athlete_suite(
    missing_limits: dict[str, float],
    *,
    row_shares: Mapping[str, tuple[str, str, float]] | None = None,
    future_days: int | None = None,
    min_history_days: int | None = None,
) -> gx.ExpectationSuite:
    """The per-athlete aggregate suite (one row per athlete).

    Args:
        missing_limits: column -> largest allowed share of null values since the
            column's first reading; checked on ``<column>_missing_rate``.
        row_shares: aggregate column -> (rule, column, tolerance): the share of an
            athlete's rows (or readings) a row rule dropped or masked must stay at or
            under the tolerance. This is GX's ``mostly`` (= 1 - tolerance) judged per
            athlete instead of over the whole table.
        future_days: most days an athlete's last row may lie past the reference day;
            checked on ``days_ahead``.
        min_history_days: fewest clean days that must remain where rows were dropped or
            the history was cut at a gap; checked on ``clean_days`` (null = nothing was
            removed, not checked).
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = [
        gxe.ExpectColumnValuesToBeBetween(
            column=f"{column}_missing_rate", min_value=0.0, max_value=float(limit),
            meta={"veloready_rule": RULE_MISSING, "veloready_column": column},
        )
        for column, limit in missing_limits.items()
    ]
    for agg_column, (rule, column, tolerance) in (row_shares or {}).items():
        expectations.append(gxe.ExpectColumnValuesToBeBetween(
            column=agg_column, min_value=0.0, max_value=float(tolerance),
            meta={"veloready_rule": rule, "veloready_column": column,
                  "veloready_tolerance": float(tolerance)},
        ))
    if future_days is not None:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(
            column=DAYS_AHEAD_COLUMN, max_value=int(future_days),
            meta={"veloready_rule": RULE_FUTURE, "veloready_column": "date"},
        ))
    if min_history_days is not None:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(
            column=CLEAN_DAYS_COLUMN, min_value=int(min_history_days),
            meta={"veloready_rule": RULE_HISTORY, "veloready_column": "date"},
        ))
    return _make_suite(gx, "veloready_athlete_aggregates", expectations)


def _run_suite(frame: pd.DataFrame, suite: gx.ExpectationSuite, asset: str) -> Any:
    """Validate ``frame`` once in a throw-away in-memory GX context.

    Results are COMPLETE, so every offending row is listed (not just a sample). The
    frame must have a default RangeIndex: GX then reports offending rows by their index
    label, which is the row's position. (Naming index columns through
    ``unexpected_index_column_names`` costs GX ~0.2 ms per offending row in Python,
    which turns a unit mix-up across a whole week's table into minutes.)
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if not isinstance(frame.index, pd.RangeIndex) or frame.index.start != 0:
        raise ValueError("internal: GX frames must carry a 0-based RangeIndex")
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (
        context.data_sources.add_pandas(f"veloready_{asset}")
        .add_dataframe_asset(asset)
        .add_batch_definition_whole_dataframe("whole_frame")
    )
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    for res in result.results:
        if _raised(res.exception_info):
            cfg = res.expectation_config
            what = f"{cfg.type} {cfg.kwargs}" if cfg is not None else "an expectation"
            raise RuntimeError(
                f"Great Expectations could not evaluate {what} on {asset}: "
                f"{_exception_message(res.exception_info)}"
            )
    return result


def _raised(info: Any) -> bool:
    if not isinstance(info, dict):
        return bool(getattr(info, "raised_exception", False))
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(_raised(v) for v in info.values())


def _exception_message(info: Any) -> str:
    if isinstance(info, dict):
        if info.get("exception_message"):
            return str(info["exception_message"])
        for v in info.values():
            msg = _exception_message(v)
            if msg:
                return msg
        return ""
    return str(getattr(info, "exception_message", "") or "")


def _unexpected_positions(res: Any) -> np.ndarray:
    """Positions of the rows GX flagged, checked against its own count (never truncated)."""
    listed = res.result.get("unexpected_index_list") or []
    positions = np.asarray(listed, dtype=np.int64)
    count = res.result.get("unexpected_count")
    if count is not None and count != len(positions):
        raise RuntimeError(
            f"{res.expectation_config.type} on {res.expectation_config.kwargs}: GX counted "
            f"{count} unexpected rows but listed {len(positions)}; refusing to guess which"
        )
    return positions


# --------------------------------------------------------------------------- helpers


def _has_canonical_dtype(series: pd.Series, col: Column) -> bool:
    if col.dtype == "float":
        return pd.api.types.is_float_dtype(series)
    if col.dtype == "date":
        return pd.api.types.is_datetime64_dtype(series)
    if col.dtype == "string":
        return isinstance(series.dtype, pd.StringDtype)
    return True


def _ensure_canonical_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce only the columns that are not canonical yet, keeping earlier type notes.

    Sources already call `coerce_canonical`; this keeps frames built by hand (tests,
    notebooks, new sources) from crashing the range checks with string comparisons,
    and it is cheap because well-typed columns are left alone.
    """
    todo = [
        c for c in frame.columns
        if c in COLUMNS_BY_NAME and not _has_canonical_dtype(frame[c], COLUMNS_BY_NAME[c])
    ]
    if not todo:
        return frame
    fixed = coerce_canonical(frame[todo])
    out = frame.copy()
    for c in todo:
        out[c] = fixed[c]
    if COERCE_ERRORS in fixed:
        old = out[COERCE_ERRORS].fillna("").astype(str) if COERCE_ERRORS in out else ""
        out[COERCE_ERRORS] = old + fixed[COERCE_ERRORS].astype(str)
    return out


def _json_value(value: Any) -> Any:
    """A JSON-friendly scalar: NaN/NA -> None, timestamps -> ISO date strings."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _md_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _fmt_bound(value: float | None) -> str:
    return "-inf" if value is None else f"{value:g}"


class _Rows:
    """Positional access to the columns used for report examples."""

    def __init__(self, frame: pd.DataFrame, raw: pd.DataFrame | None = None) -> None:
        n = len(frame)
        self.raw = frame if raw is None else raw  # the input before dtype fixes
        self.athlete = frame["athlete_id"].to_numpy(dtype=object, na_value=None)
        self.date = frame["date"].to_numpy()
        self.file = (
            frame[FILE_COLUMN].to_numpy(dtype=object) if FILE_COLUMN in frame
            else np.full(n, None, dtype=object)
        )
        self.line = (
            frame[LINE_COLUMN].to_numpy(dtype=object) if LINE_COLUMN in frame
            else np.full(n, None, dtype=object)
        )
        self.frame = frame

    def example(self, row: int, value: Any = None, message: str | None = None) -> dict[str, Any]:
        ex = {
            "date": _json_value(pd.Timestamp(self.date[row]) if not pd.isna(self.date[row])
                                else None),
            "value": _json_value(value),
            "file": _json_value(self.file[row]),
            "line": _json_value(self.line[row]),
        }
        if ex["line"] is not None:
            ex["line"] = int(ex["line"])
        if message:
            ex["message"] = message
        return ex


def _detail(rule: str, column: str, n: int, extra: dict[str, Any]) -> str:
    """The human sentence for one failure (plus its share and tolerance where judged)."""
    col = COLUMNS_BY_NAME.get(column)
    unit = f" {col.unit}" if col is not None and col.unit not in ("-", "") else ""
    text: str
    if rule == RULE_BETWEEN:
        text = (f"{n} value(s) of {column} outside the physiological range "
                f"{_fmt_bound(extra.get('min'))} to {_fmt_bound(extra.get('max'))}{unit}")
    elif rule == RULE_NOT_NULL:
        text = f"{n} row(s) have no {column}, which every row needs"
    elif rule == RULE_UNIQUE:
        text = (f"{n} rows share an (athlete_id, date) with another row: "
                f"{extra['n_dates']} date(s) appear more than once")
    elif rule == RULE_TYPE:
        dtype = col.dtype if col is not None else "its canonical type"
        text = f"{n} value(s) of {column} could not be read as {dtype}"
    elif rule == RULE_PARSE:
        first = "" if n == 1 else "first: "
        what = "value(s)" if extra.get("action") == "masked" else "row(s)"
        text = f"{n} {what} the source could not parse ({first}{extra['message']})"
    elif rule == RULE_MISSING:
        return (f"{extra['rate']:.0%} of {column} values are missing "
                f"({n} of {extra['n_rows']} rows{extra.get('since', '')}; at most "
                f"{extra['limit']:.0%} allowed)")
    elif rule == RULE_ID:
        return str(extra["message"])
    elif rule == RULE_GAP:
        return (f"{extra['gap']} consecutive days without data between {extra['before']} and "
                f"{extra['after']} (at most {extra['limit']} allowed): only "
                f"{extra['after_days']} day(s) of data after it, fewer than min_history_days "
                f"= {extra['min_history_days']}")
    elif rule == RULE_FUTURE:
        return (f"{n} row(s) dated after {extra['limit']} ({extra['days']} day(s) past "
                f"{extra['reference']}); the latest is {extra['latest']}: the date column "
                "cannot be trusted (validation.future_days)")
    elif rule == RULE_HISTORY:
        return (f"only {extra['clean_days']} clean day(s) remain in the training window after "
                f"dropping {extra['dropped']} row(s), fewer than min_history_days = "
                f"{extra['min_history_days']}")
    else:
        raise ValueError(f"unknown validation rule {rule!r}")
    if "share" in extra:
        judged = "readings" if ACTION.get(rule) == "masked" else "rows"  # parse: rows
        text += (f" - {extra['share']:.1%} of {extra['denominator']} {judged} in the window, "
                 f"tolerance {extra['tolerance']:.0%} (validation.row_tolerance."
                 f"{TOLERANCE_KEY[rule]})")
        if extra.get("within_tolerance"):
            text += f"; within it, so {extra.get('action', ACTION[rule])} and reported"
    return text


def _expectation_text(rule: str, kwargs: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "batch_id")
    return f"{rule}({args})"


# --------------------------------------------------------------------------- validation


def _check_arguments(frame: pd.DataFrame, max_gap_days: int, min_history_days: int | None,
                     future_days: int | None) -> None:
    """Raise ValueError for a missing required column or a limit out of range."""
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise ValueError(
            f"validation: required column(s) {', '.join(missing_cols)} missing from the "
            f"whole frame (rule {RULE_EXISTS}); columns present: {list(frame.columns)}"
        )
    if max_gap_days < 0:
        raise ValueError(f"validation: max_gap_days must be >= 0, got {max_gap_days}")
    if min_history_days is not None and min_history_days < 1:
        raise ValueError(f"validation: min_history_days must be >= 1, got {min_history_days}")
    if future_days is not None and future_days < 0:
        raise ValueError(f"validation: future_days must be >= 0, got {future_days}")


def _report_row_problems(failures: _Failures, bad: _Failures,
                         warnings: dict[str, list[str]], notes: _Notes) -> None:
    """Row problems into the reports, warnings and notes.

    Quarantined athletes' reports show every row problem, causes first; the other
    athletes get one warning per rule and column.
    """
    for aid in failures:
        for key, entry in bad.get(aid, {}).items():
            if key not in failures[aid]:
                entry = dict(entry, extra=dict(entry["extra"], within_tolerance=True))
                failures[aid][key] = entry
    for aid, entries in bad.items():
        for (rule, column), entry in entries.items():
            notes.add_rows(aid, rule, column, entry)
            if aid not in failures:
                first = entry["items"][0] if entry["items"] else {}
                warnings.setdefault(aid, []).append(
                    f"{entry['n']} {'value(s)' if entry['action'] == 'masked' else 'row(s)'} "
                    f"{entry['action']} by rule {rule} on {column} (first: "
                    f"{first.get('file')}:{first.get('line')}, value {first.get('value')!r})")


def validate_frame(
    frame: pd.DataFrame,
    parse_issues: Sequence[ParseIssue] = (),
    *,
    max_gap_days: int = 14,
    max_missing_rates: dict[str, float] | None = None,
    tolerances: Mapping[str, float] | None = None,
    min_history_days: int | None = None,
    window: TrainingWindow | None = None,
    future_days: int | None = None,
    today: pd.Timestamp | date | None = None,
    adapter_notes: Mapping[str, str] | None = None,
) -> ValidationOutcome:
    """Validate the canonical table: mask or drop bad rows, quarantine unusable athletes.

    Args:
        frame: canonical rows of all athletes (from a source; may carry the helper
            columns ``_file``, ``_line`` and ``_coerce_errors``).
        parse_issues: what the source could not read. An error drops its row (the row
            is not in ``frame``) and counts against the ``parse`` tolerance; an issue whose
            optional ``severity`` is not ``"error"`` (a superseded duplicate, a nap, a
            count of missing-value tokens) is a note. Issues without an athlete id are
            listed as unattributed.
        max_gap_days: most consecutive calendar days without a row; after a longer gap
            only the rows after it are used (a note), and the athlete is quarantined
            if fewer than ``min_history_days`` remain.
        max_missing_rates: per-column overrides of `schema.Column.max_missing_rate`
            (a quarantine rule for required columns, a sensor note for optional ones).
        tolerances: per row-rule tolerance (keys of `DEFAULT_TOLERANCES`); missing keys
            keep their defaults.
        min_history_days: fewest clean days an athlete that lost rows must keep; None
            turns the rule off (short histories are then the trainer's business).
        window: the training window; None = every row.
        future_days: rows dated more than this many days past the reference day (the
            later of today and ``window.as_of``) quarantine their athlete; None = off.
        today: the reference "today" (default: the current UTC date).
        adapter_notes: athlete -> the source's remarks ("; "-separated), carried into
            the data notes.

    Returns:
        The clean rows, the quarantine reports, warnings, data notes and counts.

    Raises:
        ValueError: a required column is missing from the whole frame, or a limit is
            out of range (the message names the column or setting).
    """
    _check_arguments(frame, max_gap_days, min_history_days, future_days)
    limits = _missing_limits(frame.columns, max_missing_rates)
    tol = _tolerances(tolerances)
    window = window or TrainingWindow()

    work = _ensure_canonical_dtypes(frame).reset_index(drop=True)
    raw = frame.reset_index(drop=True)
    notes = _Notes()
    failures: _Failures = {}
    unattributed: list[dict[str, Any]] = []

    # 1. Future dates (judged on every row, before the window would hide them).
    days_ahead, reference = _days_ahead(work, window, today, future_days)
    keep = ~(work["date"] > reference + pd.Timedelta(days=future_days or 0)).to_numpy(
        dtype=bool) if future_days is not None else np.ones(len(work), dtype=bool)
    # 2. The training window.
    keep, skipped = _apply_window(work, keep, window, notes)
    win = work.loc[keep].reset_index(drop=True)
    rows = _Rows(win, raw=raw.loc[keep].reset_index(drop=True))
    issues = list(parse_issues)

    # 3. Row rules (GX row suite) and the source's parse issues.
    bad: _Failures = {}
    matched = _collect_row_failures(win, rows, issues, bad, unattributed)
    warnings = _collect_parse_issues(issues, rows, matched, bad, unattributed, notes)
    # 4. Drop and mask what broke a row rule; 5. cut histories after long gaps.
    final, dropped = _drop_and_mask(win, bad)
    final, cuts = _cut_after_gaps(final, rows, max_gap_days, notes)
    # 6. The athlete suite over one row per athlete.
    athletes = sorted(set(work["athlete_id"].dropna().astype(str)) | set(bad)
                      | {str(i.athlete_id) for i in issues if i.athlete_id is not None})
    agg, shares, sensor_warnings = _athlete_aggregates(
        athletes, win, final, bad, dropped, cuts, days_ahead, limits, tol, min_history_days)
    for aid, lines in sensor_warnings.items():
        warnings.setdefault(aid, []).extend(lines)
    for aid, lines in sensor_warnings.items():
        for line in lines:
            notes.add(aid, "gap" if "without data" in line else "sensor", line)
    if len(agg):
        _collect_aggregate_failures(
            agg, shares, work, final, bad, cuts, dropped, reference, future_days, limits,
            min_history_days, failures)
    _collect_id_failures(work, failures)
    _report_row_problems(failures, bad, warnings, notes)
    for aid, text in (adapter_notes or {}).items():
        for part in (p.strip() for p in str(text).split(";")):
            if part:
                notes.add(str(aid), "adapter", part)

    reports = _build_reports(failures, work, warnings)
    quarantined = list(reports)
    keep_rows = final["athlete_id"].notna() & ~final["athlete_id"].isin(quarantined)
    canonical = [c.name for c in CANONICAL_COLUMNS if c.name in work.columns]
    clean = (
        final.loc[keep_rows.to_numpy(dtype=bool), canonical]
        .sort_values(["athlete_id", "date"], kind="stable")
        .reset_index(drop=True)
    )
    for aid in quarantined:
        skipped.pop(aid, None)
    return ValidationOutcome(
        clean=clean,
        quarantined=reports,
        warnings={a: w for a, w in sorted(warnings.items()) if w},
        n_athletes=len(set(athletes) | set(reports)),
        unattributed=unattributed,
        n_rows_in=len(frame),
        data_notes=notes.by_athlete(),
        skipped=skipped,
        window=window.describe(),
    )


def _tolerances(overrides: Mapping[str, float] | None) -> dict[str, float]:
    tol = dict(DEFAULT_TOLERANCES)
    for key, value in (overrides or {}).items():
        if key not in tol:
            raise ValueError(f"validation: row_tolerance names unknown rule {key!r} "
                             f"(known: {', '.join(sorted(tol))})")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"validation: row_tolerance.{key} must be within 0..1, got {value}")
        tol[key] = float(value)
    return tol


class _Notes:
    """Per-athlete data notes, in a stable order."""

    def __init__(self) -> None:
        self._notes: dict[str, list[dict[str, Any]]] = {}

    def add(self, aid: str, kind: str, message: str, count: int = 1,
            **extra: Any) -> None:
        self._notes.setdefault(aid, []).append(
            {"kind": kind, "count": int(count), "message": message, **extra})

    def add_rows(self, aid: str, rule: str, column: str, entry: dict[str, Any]) -> None:
        action = entry["action"]
        what = "value(s)" if action == "masked" else "row(s)"
        self.add(aid, action, f"{entry['n']} {what} {action} by rule {rule} on {column}",
                 count=entry["n"], rule=rule, column=column, action=action,
                 rows=list(entry["items"][:MAX_LISTED]))

    def by_athlete(self) -> dict[str, list[dict[str, Any]]]:
        order = {k: i for i, k in enumerate(NOTE_KINDS)}
        return {a: sorted(n, key=lambda x: order.get(x["kind"], 99))
                for a, n in sorted(self._notes.items())}


def _utc_today() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()


def _days_ahead(work: pd.DataFrame, window: TrainingWindow, today: Any,
                future_days: int | None) -> tuple[pd.Series, pd.Timestamp]:
    """Days each athlete's last row lies past the reference day, and that day."""
    reference = pd.Timestamp(today).normalize() if today is not None else _utc_today()
    if window.as_of is not None and window.as_of > reference:
        reference = window.as_of
    if future_days is None:
        return pd.Series(dtype="float64"), reference
    dated = work[work["athlete_id"].notna() & work["date"].notna()]
    last = dated.groupby(dated["athlete_id"].astype(str))["date"].max()
    return (last - reference).dt.days.astype("float64"), reference


def _apply_window(work: pd.DataFrame, keep: np.ndarray, window: TrainingWindow,
                  notes: _Notes) -> tuple[np.ndarray, dict[str, str]]:
    """Leave out rows outside the training window; count them per athlete."""
    skipped: dict[str, str] = {}
    if window.as_of is None and window.since is None and window.max_history_days is None:
        return keep, skipped
    aid = work["athlete_id"].astype("string")
    date_ = work["date"]
    had = set(aid[keep].dropna())
    keep = keep.copy()
    if window.as_of is not None:
        late = keep & (date_ > window.as_of).to_numpy(dtype=bool)
        for a, n in aid[late].value_counts().items():
            notes.add(str(a), "window", f"{n} row(s) after the as-of date "
                      f"{window.as_of:%Y-%m-%d} not used", count=int(n))
        keep &= ~late
    dated = keep & date_.notna().to_numpy(dtype=bool) & aid.notna().to_numpy(dtype=bool)
    last = date_[dated].groupby(aid[dated]).max()
    start = pd.Series(pd.NaT, index=last.index, dtype="datetime64[ns]")
    if window.max_history_days is not None:
        start = last - pd.Timedelta(days=window.max_history_days - 1)
    if window.since is not None:
        start = start.where(start > window.since, window.since).fillna(window.since)
    row_start = aid.map(start).astype("datetime64[ns]")
    early = keep & (date_ < row_start).fillna(False).to_numpy(dtype=bool)
    for a, n in aid[early].value_counts().items():
        notes.add(str(a), "window", f"{n} row(s) before {start[a]:%Y-%m-%d} (start of the "
                  "training window) not used", count=int(n))
    keep &= ~early
    for a in sorted(had - set(aid[keep].dropna())):
        reason = f"no rows in the training window ({window.describe()['since'] or 'no since'}"
        reason += f" .. {window.describe()['as_of'] or 'last row'})"
        skipped[str(a)] = reason
        notes.add(str(a), "window", reason, count=0)
    return keep, skipped


def _collect_row_failures(
    work: pd.DataFrame,
    rows: _Rows,
    issues: list[ParseIssue],
    bad: _Failures,
    unattributed: list[dict[str, Any]],
) -> set[int]:
    """Run the row suite once and file every offending row under its athlete.

    Returns:
        ``id()`` of the parse issues already shown as type failures, so they are not
        reported twice.
    """
    gx_frame = _row_frame(work)
    result = _run_suite(gx_frame, build_suite(gx_frame.columns), "canonical_rows")
    issue_by_cell = {(i.file, i.line, i.column): i for i in issues}
    matched: set[int] = set()
    for res in result.results:
        if res.success:
            continue
        meta = res.expectation_config.meta or {}
        rule, column = meta["veloready_rule"], meta["veloready_column"]
        kwargs = dict(res.expectation_config.kwargs)
        if rule == RULE_EXISTS:
            raise ValueError(f"validation: required column {column} missing ({RULE_EXISTS})")
        flagged = _unexpected_positions(res)
        expectation = _expectation_text(res.expectation_config.type, kwargs)
        if rule == RULE_TYPE:
            _collect_type_failures(work, rows, flagged, issue_by_cell, matched,
                                   bad, unattributed, expectation)
            continue
        if rule == RULE_NOT_NULL and column == "athlete_id":
            for r in flagged:
                unattributed.append({**rows.example(int(r)), "column": "athlete_id",
                                     "rule": RULE_NOT_NULL, "message": "row has no athlete_id"})
            continue
        values = work[column].to_numpy()
        for r in flagged:
            aid = rows.athlete[r]
            if aid is None:
                continue  # listed as unattributed by the athlete_id rule
            entry = _entry(bad, str(aid), rule, column, expectation,
                           {"min": kwargs.get("min_value"), "max": kwargs.get("max_value")})
            if rule == RULE_UNIQUE:
                entry["dates"].add(str(rows.example(int(r))["date"]))
            value = None if rule in (RULE_NOT_NULL, RULE_UNIQUE) else values[r]
            _add_item(entry, int(r), rows.example(int(r), value))
    return matched


def _entry(bad: _Failures, aid: str, rule: str, column: str, expectation: str | None,
           extra: dict[str, Any], action: str | None = None) -> dict[str, Any]:
    return bad.setdefault(aid, {}).setdefault(
        (rule, column), {"n": 0, "examples": [], "items": [], "pos": [], "dates": set(),
                         "expectation": expectation, "extra": extra,
                         "action": action or ACTION[rule]})


def _add_item(entry: dict[str, Any], pos: int | None, example: dict[str, Any]) -> None:
    entry["n"] += 1
    if pos is not None:
        entry["pos"].append(pos)
    if len(entry["items"]) < MAX_LISTED:
        entry["items"].append(example)
    if len(entry["examples"]) < MAX_EXAMPLES:
        entry["examples"].append(example)


def _collect_parse_issues(
    issues: list[ParseIssue],
    rows: _Rows,
    matched: set[int],
    bad: _Failures,
    unattributed: list[dict[str, Any]],
    notes: _Notes,
) -> dict[str, list[str]]:
    """File the parse issues the frame does not already show as type failures.

    Errors become dropped rows (the source did not put them in the frame); notes
    (``severity`` other than error) become data notes and warning lines.

    Returns:
        athlete -> warning lines for issues the source marked as non-errors.
    """
    lines: dict[str, list[str]] = {}
    in_frame = {(f, li): i for i, (f, li) in enumerate(zip(rows.file, rows.line, strict=True))
                if li is not None}
    for issue in issues:
        if id(issue) in matched:
            continue
        ex = {"date": None, "value": None, "file": issue.file, "line": issue.line,
              "message": issue.message}
        severity = str(getattr(issue, "severity", "error"))
        if issue.athlete_id is None:
            unattributed.append({**ex, "column": issue.column, "rule": RULE_PARSE,
                                 "severity": severity})
            continue
        aid = str(issue.athlete_id)
        if severity != "error":
            where = f"{issue.file}" + (f":{issue.line}" if issue.line is not None else "")
            col = f" {issue.column}" if issue.column else ""
            count = int(getattr(issue, "count", 1) or 1)
            kind = "missing_tokens" if hasattr(issue, "count") else "source"
            notes.add(aid, kind, issue.message, count=count, file=issue.file,
                      line=issue.line, column=issue.column)
            mine = lines.setdefault(aid, [])
            if len(mine) < MAX_EXAMPLES:
                mine.append(f"source note ({where}{col}): {issue.message}")
            elif len(mine) == MAX_EXAMPLES:
                mine.append("... and more source notes (see the data notes)")
            continue
        # A cell the source left empty (its row is in the frame) is masked; a row the
        # source could not use at all is dropped.
        pos = in_frame.get((issue.file, issue.line)) if issue.column else None
        if pos is not None:
            ex["date"] = rows.example(pos)["date"]
        # A source without per-row provenance names the day whose value it left empty.
        day = getattr(issue, "day", None) if issue.column else None
        if pos is None and day is not None:
            ex["date"] = day
        entry = _entry(bad, aid, RULE_PARSE, issue.column or "(row)", None,
                       {"message": issue.message},
                       action="masked" if pos is not None or day is not None else "dropped")
        _add_item(entry, None, ex)
    return lines


def _drop_and_mask(win: pd.DataFrame, bad: _Failures
                   ) -> tuple[pd.DataFrame, dict[str, int]]:
    """The window's rows without dropped rows and with masked values set missing.

    Returns:
        The rows (column ``_pos`` keeps each row's position in ``win``) and
        athlete -> rows dropped (rows of the frame plus rows the source could not parse).
    """
    drop = np.zeros(len(win), dtype=bool)
    out = win.copy()
    dropped: dict[str, int] = {}
    for aid, entries in bad.items():
        mine: set[int] = set()
        parse_rows = 0
        for (rule, column), entry in entries.items():
            if entry["action"] == "dropped":
                parse_rows += entry["n"] - len(entry["pos"])  # not in the frame at all
                mine.update(entry["pos"])
            elif rule == RULE_BETWEEN and entry["pos"]:
                values = out[column].to_numpy(dtype="float64", copy=True)
                values[np.asarray(entry["pos"], dtype=np.int64)] = np.nan
                out[column] = values
        if mine:
            drop[np.asarray(sorted(mine), dtype=np.int64)] = True
        if mine or parse_rows:
            dropped[aid] = len(mine) + parse_rows
    out["_pos"] = np.arange(len(win))
    return out.loc[~drop], dropped


def _cut_after_gaps(final: pd.DataFrame, rows: _Rows, max_gap_days: int, notes: _Notes
                    ) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Keep only the rows after each athlete's last gap longer than ``max_gap_days``.

    Loads, baselines and trends cannot bridge weeks without data, so the history
    before such a gap is left out (a note says how much); the athlete suite then checks
    that enough remains.
    """
    ok = final["athlete_id"].notna() & final["date"].notna()
    sub = final.loc[ok, ["athlete_id", "date", "_pos"]].copy()
    sub["athlete_id"] = sub["athlete_id"].astype(str)
    sub = sub.sort_values(["athlete_id", "date"], kind="stable")
    same = sub["athlete_id"].eq(sub["athlete_id"].shift())
    gap = (sub["date"].diff().dt.days - 1).where(same)
    long = sub[gap > max_gap_days].assign(gap=gap[gap > max_gap_days],
                                          prev=sub["date"].shift()[gap > max_gap_days],
                                          prev_pos=sub["_pos"].shift()[gap > max_gap_days])
    cuts: dict[str, dict[str, Any]] = {}
    if long.empty:
        return final, cuts
    last = long.drop_duplicates("athlete_id", keep="last").set_index("athlete_id")
    start = final["athlete_id"].astype("string").map(last["date"]).astype("datetime64[ns]")
    before = (final["date"] < start).fillna(False).to_numpy(dtype=bool)
    n_before = final.loc[before, "athlete_id"].astype(str).value_counts()
    for aid, g in last.iterrows():
        n_cut = int(n_before.get(aid, 0))
        info = {"gap": int(g["gap"]), "before": f"{g['prev']:%Y-%m-%d}", "limit": max_gap_days,
                "after": f"{g['date']:%Y-%m-%d}", "n_cut": n_cut,
                "examples": [rows.example(int(g["prev_pos"]), "last day before the gap"),
                             rows.example(int(g["_pos"]),
                                          f"first day after {int(g['gap'])} empty days")]}
        cuts[str(aid)] = info
        notes.add(str(aid), "gap", f"{info['n_cut']} row(s) up to {info['before']} not used: "
                  f"{info['gap']} days without data until {info['after']} (max_gap_days "
                  f"exceeded; loads and baselines cannot bridge it)", count=n_cut)
    return final.loc[~before], cuts


SENSOR_ABSENT_RATE = 0.95
#: A sensor whose first reading comes this many days after the athlete's first row in
#: the window is noted as late-starting.
LATE_SENSOR_DAYS = 28


def _athlete_aggregates(
    athletes: list[str],
    win: pd.DataFrame,
    final: pd.DataFrame,
    bad: _Failures,
    dropped: dict[str, int],
    cuts: dict[str, dict[str, Any]],
    days_ahead: pd.Series,
    limits: dict[str, float],
    tol: dict[str, float],
    min_history_days: int | None,
) -> tuple[pd.DataFrame, dict[str, tuple[str, str, float]], dict[str, list[str]]]:
    """One row per athlete for the athlete suite, the share columns it checks, warnings.

    Shares are per athlete: masked values over the column's readings in the window,
    dropped rows over the athlete's rows in the window (plus rows the source could not
    parse). Missing rates count from each column's first reading, so a sensor bought
    late is judged on the days it existed; for optional columns they only produce notes
    (absent, sparse or late-starting sensor), which keeps a column's treatment the same
    however the file is cut.
    """
    idx = pd.Index(athletes, dtype=object)
    agg = pd.DataFrame({"athlete_id": athletes})
    warnings: dict[str, list[str]] = {}
    if not athletes:
        return agg, {}, warnings
    shares = _bad_shares(agg, idx, win, bad, tol)
    if len(days_ahead):
        agg[DAYS_AHEAD_COLUMN] = days_ahead.reindex(idx).to_numpy(dtype="float64")

    ok = final["athlete_id"].notna()
    sub = final.loc[ok].copy()
    sub["athlete_id"] = sub["athlete_id"].astype(str)
    fa = sub["athlete_id"]
    n_rows = fa.value_counts()
    _missing_rates(agg, idx, sub, n_rows, limits, warnings)
    if min_history_days is not None:
        touched = sorted(set(dropped) | set(cuts))
        clean = pd.Series(np.nan, index=idx)
        for aid in touched:
            if aid in clean.index:
                clean[aid] = float(n_rows.get(aid, 0))
        if clean.notna().any():
            agg[CLEAN_DAYS_COLUMN] = clean.to_numpy(dtype="float64")
    _gap_warnings(sub, warnings)
    return agg, shares, warnings


def _bad_shares(agg: pd.DataFrame, idx: pd.Index, win: pd.DataFrame, bad: _Failures,
                tol: dict[str, float]) -> dict[str, tuple[str, str, float]]:
    """One ``bad_share_<k>`` column in ``agg`` per rule and column that failed a row."""
    wa = win["athlete_id"].astype("string")
    rows_in = wa.value_counts()
    parse_rows = pd.Series({a: sum(e["n"] for (r, _), e in ent.items()
                                   if r == RULE_PARSE and e["action"] == "dropped")
                            for a, ent in bad.items()}, dtype="float64")
    shares: dict[str, tuple[str, str, float]] = {}
    for k, (rule, column) in enumerate(sorted({key for e in bad.values() for key in e})):
        mine = {a: ent[(rule, column)] for a, ent in bad.items() if (rule, column) in ent}
        if ACTION[rule] == "masked" and column in win:
            typed = pd.Series({a: ent[(RULE_TYPE, column)]["n"] for a, ent in bad.items()
                               if (RULE_TYPE, column) in ent}, dtype="float64")
            denom = win[column].notna().groupby(wa).sum().astype("float64").add(
                typed, fill_value=0)
        else:
            denom = rows_in.astype("float64").add(parse_rows, fill_value=0)
        name = f"bad_share_{k}"
        tolerance = tol[TOLERANCE_KEY[rule]]
        share = pd.Series(np.nan, index=idx)
        for a, entry in mine.items():
            d = float(denom.get(a, 0.0)) or float(entry["n"])
            share[a] = entry["n"] / d
            entry["extra"].update(share=share[a], denominator=int(d), tolerance=tolerance,
                                 action=entry["action"])
        agg[name] = share.to_numpy(dtype="float64")
        shares[name] = (rule, column, tolerance)
    return shares


def _missing_rates(agg: pd.DataFrame, idx: pd.Index, sub: pd.DataFrame, n_rows: pd.Series,
                   limits: dict[str, float], warnings: dict[str, list[str]]) -> None:
    """Required columns' missing rates into ``agg``; optional sensors' notes as warnings."""
    fa = sub["athlete_id"]
    first_day = sub.groupby(fa)["date"].min()
    for column, limit in limits.items():
        present = sub[column].notna()
        first = sub["date"].where(present).groupby(fa).min()
        since = sub["date"] >= fa.map(first)
        n_since = since.groupby(fa).sum()
        rate = ((since & ~present).groupby(fa).sum() / n_since.where(n_since > 0))
        n_present = present.groupby(fa).sum()
        if COLUMNS_BY_NAME[column].required:
            rate = rate.where(n_present > 0, 1.0)  # never read: all missing
            agg[f"{column}_missing_rate"] = rate.reindex(idx).to_numpy(dtype="float64")
            continue
        share_present = n_present / n_rows.reindex(n_present.index)
        for aid in n_present.index:
            have, total = int(n_present[aid]), int(n_rows[aid])
            if have == 0 or share_present[aid] <= 1 - SENSOR_ABSENT_RATE:
                warnings.setdefault(aid, []).append(
                    f"{column} present on {have} of {total} days (sensor absent?): its "
                    "missing-rate check is skipped and features that need it are dropped")
                continue
            late = (first[aid] - first_day[aid]).days
            if late >= LATE_SENSOR_DAYS:
                warnings.setdefault(aid, []).append(
                    f"{column} starts on {first[aid]:%Y-%m-%d}, {late} day(s) after the "
                    "athlete's first day in the window (late-starting sensor): earlier days "
                    "have none and its missing rate counts from its first reading")
            if rate[aid] > limit:
                warnings.setdefault(aid, []).append(
                    f"{column} missing on {rate[aid]:.0%} of the {int(n_since[aid])} days "
                    f"since its first reading (more than {limit:.0%}): a sparse sensor, "
                    "features that need it have gaps")


def _gap_warnings(sub: pd.DataFrame, warnings: dict[str, list[str]]) -> None:
    """Gaps (at or under the limit) in what is trained on: a note naming them."""
    dated = sub[sub["date"].notna()].sort_values(["athlete_id", "date"], kind="stable")
    same = dated["athlete_id"].eq(dated["athlete_id"].shift())
    gap = (dated["date"].diff().dt.days - 1).where(same).clip(lower=0).fillna(0)
    frame = pd.DataFrame({"a": dated["athlete_id"], "gap": gap, "date": dated["date"],
                          "prev": dated["date"].shift()})
    gapped = frame[frame["gap"] > 0]
    for aid, g in gapped.groupby("a", sort=True):
        longest = g.loc[g["gap"].idxmax()]
        warnings.setdefault(str(aid), []).append(
            f"{int(g['gap'].sum())} day(s) without data in {len(g)} gap(s); longest "
            f"{int(longest['gap'])} day(s) between {longest['prev']:%Y-%m-%d} and "
            f"{longest['date']:%Y-%m-%d}")


def _collect_aggregate_failures(
    agg: pd.DataFrame,
    shares: dict[str, tuple[str, str, float]],
    work: pd.DataFrame,
    final: pd.DataFrame,
    bad: _Failures,
    cuts: dict[str, dict[str, Any]],
    dropped: dict[str, int],
    reference: pd.Timestamp,
    future_days: int | None,
    limits: dict[str, float],
    min_history_days: int | None,
    failures: _Failures,
) -> None:
    """Run the athlete suite once and file each failing athlete with example rows."""
    required = {c: v for c, v in limits.items() if COLUMNS_BY_NAME[c].required}
    suite = build_athlete_suite(
        required, row_shares=shares,
        future_days=future_days if DAYS_AHEAD_COLUMN in agg else None,
        min_history_days=min_history_days if CLEAN_DAYS_COLUMN in agg else None,
    )
    result = _run_suite(agg, suite, "athlete_aggregates")
    full = _Rows(work)
    for res in result.results:
        if res.success:
            continue
        meta = res.expectation_config.meta or {}
        rule, column = meta["veloready_rule"], meta["veloready_column"]
        expectation = _expectation_text(res.expectation_config.type,
                                        dict(res.expectation_config.kwargs))
        for pos in _unexpected_positions(res):
            aid = str(agg["athlete_id"].iat[pos])
            if rule in TOLERANCE_KEY:
                entry = dict(bad[aid][(rule, column)])
                entry["tolerance_expectation"] = expectation
                failures.setdefault(aid, {})[(rule, column)] = entry
            elif rule == RULE_FUTURE:
                assert future_days is not None
                limit = reference + pd.Timedelta(days=future_days)
                mine = np.flatnonzero((work["athlete_id"].astype("string") == aid).fillna(False)
                                      .to_numpy(dtype=bool) & (work["date"] > limit)
                                      .to_numpy(dtype=bool))
                mine = mine[np.argsort(full.date[mine], kind="stable")]
                failures.setdefault(aid, {})[(rule, column)] = {
                    "n": len(mine), "expectation": expectation,
                    "examples": [full.example(int(r), pd.Timestamp(full.date[r]))
                                 for r in mine[:MAX_EXAMPLES]],
                    "extra": {"limit": f"{limit:%Y-%m-%d}", "days": future_days,
                              "reference": f"{reference:%Y-%m-%d}",
                              "latest": f"{pd.Timestamp(full.date[mine[-1]]):%Y-%m-%d}"}}
            elif rule == RULE_MISSING:
                failures.setdefault(aid, {})[(rule, column)] = _missing_failure(
                    final, aid, column, limits[column], expectation)
            elif rule == RULE_HISTORY:
                clean_days = int(agg[CLEAN_DAYS_COLUMN].iat[pos])
                if aid in cuts:
                    cut = cuts[aid]
                    failures.setdefault(aid, {})[(RULE_GAP, "date")] = {
                        "n": 1, "expectation": expectation, "examples": cut["examples"],
                        "extra": {"gap": cut["gap"], "before": cut["before"],
                                  "after": cut["after"], "after_days": clean_days,
                                  "limit": cut["limit"], "min_history_days": min_history_days}}
                else:
                    failures.setdefault(aid, {})[(rule, column)] = {
                        "n": dropped.get(aid, 0), "expectation": expectation, "examples": [],
                        "extra": {"clean_days": clean_days, "dropped": dropped.get(aid, 0),
                                  "min_history_days": min_history_days}}


def _missing_failure(final: pd.DataFrame, aid: str, column: str, limit: float,
                     expectation: str) -> dict[str, Any]:
    mine = final[final["athlete_id"].astype("string") == aid].sort_values("date")
    present = mine[column].notna()
    if present.any():
        first = mine.loc[present, "date"].min()
        mine = mine[mine["date"] >= first]
        since = f" since its first reading on {first:%Y-%m-%d}"
    else:
        since = ", none ever recorded"
    nulls = mine[mine[column].isna()]
    examples = [
        {"date": _json_value(d), "value": None, "file": _json_value(f), "line": _json_value(li)}
        for d, f, li in zip(nulls["date"].head(MAX_EXAMPLES),
                            nulls.get(FILE_COLUMN, pd.Series([None] * len(nulls))).head(
                                MAX_EXAMPLES),
                            nulls.get(LINE_COLUMN, pd.Series([None] * len(nulls))).head(
                                MAX_EXAMPLES), strict=True)
    ]
    for e in examples:
        if e["line"] is not None:
            e["line"] = int(e["line"])
    return {"n": len(nulls), "expectation": expectation, "examples": examples,
            "extra": {"rate": len(nulls) / max(len(mine), 1), "n_rows": len(mine),
                      "limit": limit, "since": since}}


def _collect_id_failures(work: pd.DataFrame, failures: _Failures) -> None:
    """Quarantine ids that cannot be used, or whose storage key another id shares.

    See `veloready_pipeline.ids`: such an id is that athlete's quarantine, never the run's
    crash (export folders, OTA folders and registry names are derived from the id).
    """
    from veloready_pipeline.ids import id_problem, key_collisions

    ids = work["athlete_id"].dropna().astype(str)
    counts = ids.value_counts()
    problems = {aid: p for aid in counts.index if (p := id_problem(aid))}
    clashes = key_collisions(aid for aid in counts.index if aid not in problems)
    for aid, others in clashes.items():
        problems[aid] = (f"athlete id maps to the same storage key as {others!r}; rename "
                         "one of them")
    for aid, message in problems.items():
        failures.setdefault(aid, {})[(RULE_ID, "athlete_id")] = {
            "n": int(counts[aid]), "examples": [], "expectation": None,
            "extra": {"message": message}}


def _missing_limits(
    columns: Iterable[str], overrides: dict[str, float] | None
) -> dict[str, float]:
    """Column -> max missing rate for the columns present in the frame."""
    present = set(columns)
    limits = {
        c.name: float(c.max_missing_rate)
        for c in CANONICAL_COLUMNS
        if c.max_missing_rate is not None and c.name in present
    }
    for name, rate in (overrides or {}).items():
        if name not in COLUMNS_BY_NAME:
            raise ValueError(f"validation: max_missing_rates names unknown column {name!r}")
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(
                f"validation: max_missing_rates[{name!r}] must be within 0..1, got {rate}"
            )
        if name in present:
            limits[name] = float(rate)
    return limits


def _row_frame(work: pd.DataFrame) -> pd.DataFrame:
    """The slim frame the row suite sees: ruled columns and the type notes."""
    cols = [c.name for c in CANONICAL_COLUMNS
            if c.name in work and (c.required or not c.nullable or c.min is not None)]
    data: dict[str, Any] = {c: work[c] for c in cols}
    if COERCE_ERRORS in work:
        notes = work[COERCE_ERRORS].astype("string")
        data[COERCE_ERRORS] = notes.mask(notes.fillna("").str.strip("; ") == "")
    else:
        data[COERCE_ERRORS] = pd.Series(pd.NA, index=work.index, dtype="string")
    return pd.DataFrame(data, index=work.index)


def _collect_type_failures(
    work: pd.DataFrame,
    rows: _Rows,
    flagged: np.ndarray,
    issue_by_cell: dict[tuple[Any, Any, Any], ParseIssue],
    matched_issues: set[int],
    bad: _Failures,
    unattributed: list[dict[str, Any]],
    expectation: str,
) -> None:
    """Turn ``_coerce_errors`` notes into one entry per (athlete, column)."""
    notes = work[COERCE_ERRORS].astype("string").to_numpy(dtype=object, na_value="")
    for r in flagged:
        r = int(r)
        for column in (c for c in str(notes[r]).split(";") if c.strip()):
            ex = rows.example(r)
            issue = issue_by_cell.get((ex["file"], ex["line"], column))
            if issue is not None:
                matched_issues.add(id(issue))
                message = issue.message
            else:
                raw = rows.raw[column].iat[r] if column in rows.raw else None
                shown = "" if raw is None or pd.isna(raw) else f"value {raw!r} "
                message = f"{shown}is not a valid {column}"
            ex["message"] = message
            aid = rows.athlete[r]
            if aid is None:
                unattributed.append({**ex, "column": column, "rule": RULE_TYPE})
                continue
            entry = _entry(bad, str(aid), RULE_TYPE, column, expectation, {})
            _add_item(entry, r, ex)


def _build_reports(
    failures: _Failures,
    work: pd.DataFrame,
    warnings: dict[str, list[str]],
) -> dict[str, AthleteReport]:
    n_rows = work["athlete_id"].dropna().astype(str).value_counts()
    reports: dict[str, AthleteReport] = {}
    for aid in sorted(failures):
        items = sorted(failures[aid].items(),
                       key=lambda kv: (bool(kv[1]["extra"].get("within_tolerance")),
                                       _RULE_ORDER.get(kv[0][0], 99), kv[0][1]))
        out = []
        for (rule, column), e in items:
            extra = dict(e.get("extra", {}))
            if rule == RULE_UNIQUE:
                extra["n_dates"] = len(e.get("dates", ()))
            f = {
                "column": column,
                "rule": rule,
                "expectation": e["expectation"],
                "detail": _detail(rule, column, e["n"], extra),
                "unexpected_count": int(e["n"]),
                "examples": e["examples"],
            }
            if e.get("tolerance_expectation"):
                f["tolerance_expectation"] = e["tolerance_expectation"]
            if extra.get("within_tolerance"):
                f["within_tolerance"] = True
            out.append(f)
        reports[aid] = AthleteReport(
            athlete_id=aid, failures=out, n_rows=int(n_rows.get(aid, 0)),
            warnings=list(warnings.get(aid, [])),
        )
    return reports


# --------------------------------------------------------------------------- reports


def data_notes_markdown(counts: Mapping[str, int],
                        data_notes: Mapping[str, list[dict[str, Any]]],
                        max_rows: int = 50, level: int = 1) -> str:
    """The data notes as Markdown (Prefect artifact and evaluation report)."""
    head = "#" * level
    lines = [f"{head} Data notes", "",
             "| " + " | ".join(NOTE_KINDS) + " |", "|" + "---|" * len(NOTE_KINDS),
             "| " + " | ".join(str(counts.get(k, 0)) for k in NOTE_KINDS) + " |", ""]
    for aid, notes in sorted(data_notes.items()):
        lines += [f"{head}# {aid}", ""]
        for n in notes:
            lines.append(f"- **{n['kind']}** ({n['count']}): {n['message']}")
            for r in n.get("rows", [])[:max_rows]:
                where = f"{r.get('file')}:{r.get('line')}"
                msg = f" - {r['message']}" if r.get("message") else ""
                lines.append(f"  - {r.get('date')} `{n.get('column')}` = {_md_cell(r.get('value'))}"
                             f" ({where}){msg}")
            if len(n.get("rows", [])) > max_rows:
                lines.append(f"  - ... {len(n['rows']) - max_rows} more in the summary JSON")
        lines.append("")
    return "\n".join(lines)


def write_quarantine_reports(outcome: ValidationOutcome, out_dir: Path) -> list[Path]:
    """Per quarantined athlete ``<athlete>.md``/``.json``; ``data_notes.json``; ``index.json``.

    Every file is written atomically (temporary file + rename), so a reader never sees
    half a report even if the run dies mid-write.

    Returns:
        The paths written, index last.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index: dict[str, Any] = {"summary": outcome.summary(), "reports": {}}
    for aid, report in sorted(outcome.quarantined.items()):
        stem = athlete_key(aid)
        md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
        atomic_write_text(md, report.to_markdown())
        atomic_write_text(js, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        written += [md, js]
        index["reports"][aid] = {"markdown": md.name, "json": js.name,
                                 "reason": report.first_failure()}
    notes = out_dir / "data_notes.json"
    atomic_write_text(notes, json.dumps({"counts": outcome.note_counts(),
                                     "athletes": outcome.data_notes},
                                    indent=2, default=str) + "\n")
    written.append(notes)
    index["data_notes"] = notes.name
    idx = out_dir / "index.json"
    atomic_write_text(idx, json.dumps(index, indent=2, default=str) + "\n")
    written.append(idx)
    return written
