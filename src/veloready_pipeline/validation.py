"""Validate the canonical table with Great Expectations and quarantine bad athletes.

Every rule is a genuine Great Expectations expectation generated from
`veloready_pipeline.schema.CANONICAL_COLUMNS`, so the schema module stays the one
place the rules are written down:

* **row suite** (`build_suite`), run once over the whole table: required columns
  exist, ``athlete_id``/``date`` are never null, values sit inside each column's
  physiological range, (athlete_id, date) is unique, and no value failed type
  coercion (the source records those in ``_coerce_errors``);
* **athlete suite** (`build_athlete_suite`), run once over a small table with one row
  per athlete: each column's missing-value rate and the longest run of days without
  data stay under their limits.

Running each suite once over everything (instead of once per athlete) is what keeps a
1,000-athlete x 180-day week in seconds: the expectations report the offending rows
by position (the validated frames carry a plain RangeIndex), and those rows are
mapped back to athletes here. A failing athlete is quarantined with an `AthleteReport` naming the
column, the rule and example rows (date, value, file, line); everyone else goes on.
Rows a source could not parse (`ParseIssue`) quarantine their athlete too, because a
model trained on a silently shortened history is worse than no model; an issue that
carries a ``severity`` other than ``"error"`` (the source resolved it, e.g. a superseded
duplicate report) is kept as a warning instead. Nothing is
dropped in silence: rows without an athlete id and parse issues without an athlete
are listed as ``unattributed`` in the summary.

Great Expectations is imported lazily (it takes seconds to import) and always runs
in an ephemeral context, so validation writes nothing to the working directory or
the home directory.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

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
MAX_EXAMPLES = 5

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
RULE_ID = "usable_athlete_id"  # veloready_pipeline.ids.id_problem / key_collisions
_RULE_ORDER = {r: i for i, r in enumerate(
    (RULE_ID, RULE_PARSE, RULE_TYPE, RULE_NOT_NULL, RULE_UNIQUE, RULE_BETWEEN, RULE_MISSING,
     RULE_GAP)
)}
_UNIQUE_KEY = ("athlete_id", "date")
# athlete -> (rule, column) -> {"n", "examples", "expectation", "extra"}
_Failures = dict[str, dict[tuple[str, str], dict[str, Any]]]


# --------------------------------------------------------------------------- results


@dataclass
class AthleteReport:
    """Why one athlete was quarantined, in a form a person can act on.

    Attributes:
        athlete_id: the quarantined athlete.
        failures: one dict per broken rule: ``column``, ``rule``, ``expectation`` (the
            GX expectation that caught it, or None for source parse issues), ``detail``
            (a sentence), ``unexpected_count`` and up to five ``examples`` (``date``,
            ``value``, ``file``, ``line`` and, for parse problems, ``message``).
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
        more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
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
            f"This athlete's {self.n_rows} row(s) broke {len(self.failures)} validation "
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
        clean: every row of the athletes that passed, canonical columns only.
        quarantined: athlete id -> report, for athletes withheld from training.
        warnings: athlete id -> non-fatal remarks (short gaps, absent sensors).
        n_athletes: distinct athletes seen (in rows or in attributed parse issues).
        unattributed: rows without an athlete id and parse issues without one; they
            cannot be trained on or quarantined, so they are listed instead of dropped.
        n_rows_in: rows in the input frame.
    """

    clean: pd.DataFrame
    quarantined: dict[str, AthleteReport]
    warnings: dict[str, list[str]]
    n_athletes: int
    unattributed: list[dict[str, Any]] = field(default_factory=list)
    n_rows_in: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts and one reason per quarantined athlete, for run summaries."""
        return {
            "n_athletes": self.n_athletes,
            "n_clean_athletes": self.n_athletes - len(self.quarantined),
            "n_quarantined": len(self.quarantined),
            "n_rows_in": self.n_rows_in,
            "n_rows_clean": len(self.clean),
            "n_rows_quarantined": sum(r.n_rows for r in self.quarantined.values()),
            "quarantined": {a: r.first_failure() for a, r in sorted(self.quarantined.items())},
            "n_athletes_with_warnings": len(self.warnings),
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
        rules.append((RULE_UNIQUE, "date", {"column_list": list(_UNIQUE_KEY)}))
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
    missing_limits: dict[str, float], max_gap_days: int
) -> gx.ExpectationSuite:
    """The per-athlete aggregate suite (one row per athlete).

    Args:
        missing_limits: column -> largest allowed share of null values; checked on
            the aggregate column ``<column>_missing_rate``.
        max_gap_days: most consecutive calendar days without a row; checked on the
            aggregate column ``longest_gap_days``.
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
    expectations.append(
        gxe.ExpectColumnValuesToBeBetween(
            column=GAP_COLUMN, min_value=0, max_value=int(max_gap_days),
            meta={"veloready_rule": RULE_GAP, "veloready_column": "date"},
        )
    )
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


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    """The human sentence for one failure."""
    col = COLUMNS_BY_NAME.get(column)
    unit = f" {col.unit}" if col is not None and col.unit not in ("-", "") else ""
    if rule == RULE_BETWEEN:
        return (f"{n} value(s) of {column} outside the physiological range "
                f"{_fmt_bound(extra.get('min'))} to {_fmt_bound(extra.get('max'))}{unit}")
    if rule == RULE_NOT_NULL:
        return f"{n} row(s) have no {column}, which every row needs"
    if rule == RULE_UNIQUE:
        return (f"{n} rows share an (athlete_id, date) with another row: "
                f"{extra['n_dates']} date(s) appear more than once")
    if rule == RULE_TYPE:
        dtype = col.dtype if col is not None else "its canonical type"
        return f"{n} value(s) of {column} could not be read as {dtype}"
    if rule == RULE_PARSE:
        first = "" if n == 1 else "first: "
        return f"{n} row(s) the source could not parse ({first}{extra['message']})"
    if rule == RULE_MISSING:
        return (f"{extra['rate']:.0%} of {column} values are missing "
                f"({n} of {extra['n_rows']} rows; at most {extra['limit']:.0%} allowed)")
    if rule == RULE_ID:
        return extra["message"]
    if rule == RULE_GAP:
        return (f"{extra['gap']} consecutive days without data between {extra['before']} and "
                f"{extra['after']} (at most {extra['limit']} allowed)")
    raise ValueError(f"unknown validation rule {rule!r}")


def _expectation_text(rule: str, kwargs: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "batch_id")
    return f"{rule}({args})"


# --------------------------------------------------------------------------- validation


def validate_frame(
    frame: pd.DataFrame,
    parse_issues: Sequence[ParseIssue] = (),
    *,
    max_gap_days: int = 14,
    max_missing_rates: dict[str, float] | None = None,
) -> ValidationOutcome:
    """Validate the canonical table and quarantine every athlete whose data breaks it.

    Args:
        frame: canonical rows of all athletes (from a source; may carry the helper
            columns ``_file``, ``_line`` and ``_coerce_errors``).
        parse_issues: rows the source could not parse; each quarantines its athlete.
            An issue whose optional ``severity`` attribute is not ``"error"`` (a source
            saying "duplicate report superseded", "nap ignored") is a warning instead;
            issues without an athlete id are listed as unattributed.
        max_gap_days: most consecutive calendar days an athlete may have no row; a
            longer gap quarantines, a shorter one is a warning.
        max_missing_rates: per-column overrides of `schema.Column.max_missing_rate`.

    Returns:
        The clean rows, the quarantine reports, warnings and counts.

    Raises:
        ValueError: a required column is missing from the whole frame, or a limit is
            out of range (the message names the column).
    """
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise ValueError(
            f"validation: required column(s) {', '.join(missing_cols)} missing from the "
            f"whole frame (rule {RULE_EXISTS}); columns present: {list(frame.columns)}"
        )
    if max_gap_days < 0:
        raise ValueError(f"validation: max_gap_days must be >= 0, got {max_gap_days}")
    limits = _missing_limits(frame.columns, max_missing_rates)

    work = _ensure_canonical_dtypes(frame).reset_index(drop=True)
    rows = _Rows(work, raw=frame.reset_index(drop=True))
    issues = list(parse_issues)
    failures: _Failures = {}
    unattributed: list[dict[str, Any]] = []

    matched = _collect_row_failures(work, rows, issues, failures, unattributed)
    source_notes = _collect_parse_issues(issues, matched, failures, unattributed)
    agg, gap_info, warnings = _athlete_aggregates(work, limits)
    for aid, notes in source_notes.items():
        shown = notes[:MAX_EXAMPLES]
        if len(notes) > MAX_EXAMPLES:
            shown.append(f"... and {len(notes) - MAX_EXAMPLES} more source note(s)")
        warnings.setdefault(aid, []).extend(shown)
    if len(agg):
        _collect_aggregate_failures(work, rows, agg, gap_info, limits, max_gap_days, failures)
    _collect_id_failures(work, failures)

    reports = _build_reports(failures, work, warnings)
    athletes = (set(work["athlete_id"].dropna().astype(str).unique()) | set(reports)
                | set(source_notes))
    keep = work["athlete_id"].notna() & ~work["athlete_id"].isin(list(reports))
    canonical = [c.name for c in CANONICAL_COLUMNS if c.name in work.columns]
    clean = (
        work.loc[keep.to_numpy(dtype=bool), canonical]
        .sort_values(["athlete_id", "date"], kind="stable")
        .reset_index(drop=True)
    )
    return ValidationOutcome(
        clean=clean,
        quarantined=reports,
        warnings={a: w for a, w in sorted(warnings.items()) if w},
        n_athletes=len(athletes),
        unattributed=unattributed,
        n_rows_in=len(frame),
    )


def _collect_row_failures(
    work: pd.DataFrame,
    rows: _Rows,
    issues: list[ParseIssue],
    failures: _Failures,
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
                                   failures, unattributed, expectation)
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
            entry = failures.setdefault(aid, {}).setdefault(
                (rule, column), {"n": 0, "examples": [], "expectation": expectation,
                                 "extra": {"min": kwargs.get("min_value"),
                                           "max": kwargs.get("max_value")}, "dates": set()})
            entry["n"] += 1
            if rule == RULE_UNIQUE:
                entry["dates"].add(str(rows.example(int(r))["date"]))
            if len(entry["examples"]) < MAX_EXAMPLES:
                value = None if rule in (RULE_NOT_NULL, RULE_UNIQUE) else values[r]
                entry["examples"].append(rows.example(int(r), value))
    return matched


def _collect_parse_issues(
    issues: list[ParseIssue],
    matched: set[int],
    failures: _Failures,
    unattributed: list[dict[str, Any]],
) -> dict[str, list[str]]:
    """File the parse issues the frame does not already show as type failures.

    Returns:
        athlete -> warning lines for issues the source marked as non-errors.
    """
    notes: dict[str, list[str]] = {}
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
            notes.setdefault(aid, []).append(f"source note ({where}{col}): {issue.message}")
            continue
        entry = failures.setdefault(aid, {}).setdefault(
            (RULE_PARSE, issue.column or "(row)"),
            {"n": 0, "examples": [], "expectation": None, "extra": {"message": issue.message}},
        )
        entry["n"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(ex)
    return notes


def _collect_aggregate_failures(
    work: pd.DataFrame,
    rows: _Rows,
    agg: pd.DataFrame,
    gap_info: pd.DataFrame,
    limits: dict[str, float],
    max_gap_days: int,
    failures: _Failures,
) -> None:
    """Run the per-athlete suite once and file each failing athlete with example rows."""
    result = _run_suite(agg, build_athlete_suite(limits, max_gap_days), "athlete_aggregates")
    by_athlete = agg.set_index("athlete_id")
    positions: dict[str, np.ndarray] = {}
    for res in result.results:
        if res.success:
            continue
        meta = res.expectation_config.meta or {}
        rule, column = meta["veloready_rule"], meta["veloready_column"]
        expectation = _expectation_text(res.expectation_config.type,
                                        dict(res.expectation_config.kwargs))
        for pos in _unexpected_positions(res):
            aid = str(agg["athlete_id"].iat[pos])
            if not positions:
                positions.update(
                    (str(k), v) for k, v in work.groupby("athlete_id").indices.items()
                )
            failures.setdefault(aid, {})[(rule, column)] = _aggregate_failure(
                rows, by_athlete.loc[aid], gap_info, positions[aid], aid, rule, column,
                limits, max_gap_days, expectation,
            )


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
    failures: _Failures,
    unattributed: list[dict[str, Any]],
    expectation: str,
) -> None:
    """Turn ``_coerce_errors`` notes into one failure per (athlete, column)."""
    notes = work[COERCE_ERRORS].astype("string").to_numpy(dtype=object, na_value="")
    for r in flagged:
        r = int(r)
        for column in (c for c in str(notes[r]).split(";") if c.strip()):
            ex = rows.example(r)
            issue = issue_by_cell.get((ex["file"], ex["line"], column))
            if issue is not None:
                matched_issues.add(id(issue))
            if issue is not None:
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
            entry = failures.setdefault(aid, {}).setdefault(
                (RULE_TYPE, column), {"n": 0, "examples": [], "expectation": expectation,
                                      "extra": {}})
            entry["n"] += 1
            if len(entry["examples"]) < MAX_EXAMPLES:
                entry["examples"].append(ex)


SENSOR_ABSENT_RATE = 0.95


def _athlete_aggregates(
    work: pd.DataFrame, limits: dict[str, float]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, list[str]]]:
    """One row per athlete: missing rates and the longest gap, plus warnings.

    An optional column that is empty for an athlete's whole history is a missing
    sensor (normal: no HRV strap, no power meter), not a data error, so its rate is
    left out of the check and noted as a warning; later stages skip what needs it.
    """
    ok = work["athlete_id"].notna().to_numpy(dtype=bool)
    sub = work.loc[ok, ["athlete_id", "date", *limits]].copy()
    warnings: dict[str, list[str]] = {}
    if sub.empty:
        return pd.DataFrame(columns=["athlete_id"]), pd.DataFrame(), warnings
    sub["athlete_id"] = sub["athlete_id"].astype(str)
    sub["_pos"] = np.flatnonzero(ok)
    sub = sub.sort_values(["athlete_id", "date"], kind="stable")
    groups = sub.groupby("athlete_id", sort=True)
    agg = pd.DataFrame({"n_rows": groups.size()})
    for column, _ in limits.items():
        isnull = sub[column].isna()
        rate = isnull.groupby(sub["athlete_id"]).mean()
        n_present = (~isnull).groupby(sub["athlete_id"]).sum()
        if not COLUMNS_BY_NAME[column].required:
            # A sensor on fewer than 5 % of days is a sensor the athlete does not have
            # (one stray sleep log is not a sleep tracker): normal, not bad data.
            absent = (n_present == 0) | (rate >= SENSOR_ABSENT_RATE)
            for aid in absent[absent].index:
                warnings.setdefault(aid, []).append(
                    f"{column} present on {int(n_present[aid])} of {int(groups.size()[aid])} "
                    "days (sensor absent?): its missing-rate check is skipped and features "
                    "that need it are dropped"
                )
            rate = rate.mask(absent)
        agg[f"{column}_missing_rate"] = rate
    # Gaps: calendar days without a row between consecutive dated rows.
    dated = sub[sub["date"].notna()]
    same = dated["athlete_id"].eq(dated["athlete_id"].shift())
    gap = (dated["date"].diff().dt.days - 1).where(same).clip(lower=0)
    gap_info = pd.DataFrame({"athlete_id": dated["athlete_id"], "gap": gap.fillna(0),
                             "date": dated["date"], "prev": dated["date"].shift(),
                             "_pos": dated["_pos"], "prev_pos": dated["_pos"].shift()})
    gap_info = gap_info.sort_values(["athlete_id", "gap"], ascending=[True, False],
                                    kind="stable").drop_duplicates("athlete_id")
    gap_info = gap_info.set_index("athlete_id")
    agg[GAP_COLUMN] = gap_info["gap"].reindex(agg.index).fillna(0).astype(np.int64)
    by = dated["athlete_id"]
    gapped = gap_info.assign(
        missing_days=gap.groupby(by).sum(), n_gaps=gap.gt(0).groupby(by).sum()
    )
    gapped = gapped[gapped["n_gaps"] > 0]
    for aid, n_days, n_gaps, longest, prev, nxt in zip(
        gapped.index, gapped["missing_days"], gapped["n_gaps"], gapped["gap"],
        gapped["prev"], gapped["date"], strict=True,
    ):
        warnings.setdefault(str(aid), []).append(
            f"{int(n_days)} day(s) without data in {int(n_gaps)} gap(s); longest "
            f"{int(longest)} day(s) between {prev:%Y-%m-%d} and {nxt:%Y-%m-%d}"
        )
    agg = agg.reset_index().rename(columns={"index": "athlete_id"})
    return agg, gap_info, warnings


def _aggregate_failure(
    rows: _Rows,
    a: pd.Series,
    gap_info: pd.DataFrame,
    mine: np.ndarray,
    aid: str,
    rule: str,
    column: str,
    limits: dict[str, float],
    max_gap_days: int,
    expectation: str,
) -> dict[str, Any]:
    """Report entry for an athlete that failed an aggregate rule, with example rows.

    ``a`` is the athlete's aggregate row and ``mine`` the positions of their rows.
    """
    if rule == RULE_MISSING:
        null_rows = mine[pd.isna(rows.frame[column].to_numpy()[mine])]
        null_rows = null_rows[np.argsort(rows.date[null_rows], kind="stable")]
        return {"n": len(null_rows), "expectation": expectation,
                "examples": [rows.example(int(r)) for r in null_rows[:MAX_EXAMPLES]],
                "extra": {"rate": float(a[f"{column}_missing_rate"]), "n_rows": int(a["n_rows"]),
                          "limit": limits[column]}}
    g = gap_info.loc[aid]
    examples = [rows.example(int(g["prev_pos"]), "last day before the gap"),
                rows.example(int(g["_pos"]), f"first day after {int(g['gap'])} empty days")]
    return {"n": 1, "expectation": expectation, "examples": examples,
            "extra": {"gap": int(g["gap"]), "before": f"{g['prev']:%Y-%m-%d}",
                      "after": f"{g['date']:%Y-%m-%d}", "limit": max_gap_days}}


def _build_reports(
    failures: _Failures,
    work: pd.DataFrame,
    warnings: dict[str, list[str]],
) -> dict[str, AthleteReport]:
    n_rows = work["athlete_id"].dropna().astype(str).value_counts()
    reports: dict[str, AthleteReport] = {}
    for aid in sorted(failures):
        items = sorted(failures[aid].items(),
                       key=lambda kv: (_RULE_ORDER.get(kv[0][0], 99), kv[0][1]))
        out = []
        for (rule, column), e in items:
            extra = dict(e.get("extra", {}))
            if rule == RULE_UNIQUE:
                extra["n_dates"] = len(e["dates"])
            out.append({
                "column": column,
                "rule": rule,
                "expectation": e["expectation"],
                "detail": _detail(rule, column, e["n"], extra),
                "unexpected_count": int(e["n"]),
                "examples": e["examples"],
            })
        reports[aid] = AthleteReport(
            athlete_id=aid, failures=out, n_rows=int(n_rows.get(aid, 0)),
            warnings=list(warnings.get(aid, [])),
        )
    return reports


# --------------------------------------------------------------------------- reports


def write_quarantine_reports(outcome: ValidationOutcome, out_dir: Path) -> list[Path]:
    """Write ``<athlete>.md`` and ``<athlete>.json`` per quarantined athlete plus ``index.json``.

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
        _atomic_write(md, report.to_markdown())
        _atomic_write(js, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        written += [md, js]
        index["reports"][aid] = {"markdown": md.name, "json": js.name,
                                 "reason": report.first_failure()}
    idx = out_dir / "index.json"
    _atomic_write(idx, json.dumps(index, indent=2, default=str) + "\n")
    written.append(idx)
    return written
