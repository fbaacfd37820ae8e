"""Guardrails: check an LLM brief against the rules engine's decision.

The LLM writes the words; the rules engine owns the decision. A brief is rejected when
it prescribes more than the decision allows (a TSS above the cap, a zone above the
ceiling, intervals on a day without them), when it names no TSS on a training day,
when it is not 2-3 sentences, or when it is empty or runs on. A rejected brief is
replaced by the rules brief and the record keeps the violations.

Checks are deliberately textual and conservative: a false rejection costs a nicer
sentence, a false acceptance could send an ill athlete out for VO2max intervals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from veloready_pipeline.briefs.rules import Decision

MIN_SENTENCES = 2
MAX_SENTENCES = 3
MAX_CHARS = 600

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=\S)")
_NUMBER = r"(\d{1,4})(?:\.\d+)?"
_TSS_AFTER = re.compile(
    rf"{_NUMBER}(?:\s*(?:-|–|—|to)\s*{_NUMBER})?\s*(?:TSS|training stress)\b", re.IGNORECASE
)
_TSS_BEFORE = re.compile(
    rf"\bTSS\s*(?:of|:|=|at|around|about|near|~|up to|under|below|max(?:imum)?)?\s*~?\s*"
    rf"{_NUMBER}(?:\s*(?:-|–|—|to)\s*{_NUMBER})?",
    re.IGNORECASE,
)
_ZONE = re.compile(r"\b(?:Z|zone\s*)([1-7])\b(?:\s*(?:-|–|—|to|/)\s*(?:Z|zone\s*)?([1-7])\b)?",
                   re.IGNORECASE)
_INTENSE = re.compile(
    r"\b(?:intervals?|repeats?|reps|vo2\s*max|vo2|threshold|sprints?|over-?unders?|all[- ]out|"
    r"max(?:imal)? efforts?|anaerobic|hard efforts?|race pace|tabata|\d+\s*[x×]\s*\d+)",
    re.IGNORECASE,
)
_SWEET_SPOT = re.compile(r"\bsweet[- ]?spot\b", re.IGNORECASE)
_NEGATION = re.compile(
    r"\b(?:no|not|skip|avoid|without|don'?t|never|nothing|zero|save|instead of|hold off)\b[^.!?]*$",
    re.IGNORECASE,
)
_NEGATION_WINDOW = 30


@dataclass
class GuardrailResult:
    """The verdict on one brief."""

    ok: bool
    violations: list[str] = field(default_factory=list)
    sentences: int = 0
    tss_named: list[int] = field(default_factory=list)


def split_sentences(text: str) -> list[str]:
    """Sentences, split at ., ! or ? followed by space (decimals like 1.5 stay whole)."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text.strip())) if s]


_WEEKLY_BEFORE = re.compile(r"(?:\d+-day|week(?:ly)?|last \d+ days|7d)\W*$", re.IGNORECASE)
_WEEKLY_AFTER = re.compile(r"^\W*(?:this|last|over|in the|per|a)\s+(?:\d+\s+days|week)",
                           re.IGNORECASE)


def named_tss(text: str) -> list[int]:
    """Every TSS number the text names for today, including both ends of a range.

    Weekly totals ("your 7-day TSS of 420", "380 TSS this week") are history, not a
    prescription, and are skipped.
    """
    out: list[int] = []
    for pattern in (_TSS_AFTER, _TSS_BEFORE):
        for m in pattern.finditer(text):
            before = text[max(0, m.start() - 16) : m.start()]
            after = text[m.end() : m.end() + 24]
            if _WEEKLY_BEFORE.search(before) or _WEEKLY_AFTER.search(after):
                continue
            out.extend(int(g) for g in m.groups() if g is not None)
    return out


def named_zones(text: str) -> list[int]:
    """Every power zone the text names (Z2, zone 3, Z1-Z3 counts 1 and 3)."""
    out: list[int] = []
    for m in _ZONE.finditer(text):
        out.extend(int(g) for g in m.groups() if g is not None)
    return out


def _negated(text: str, start: int) -> bool:
    window = text[max(0, start - _NEGATION_WINDOW) : start]
    return bool(_NEGATION.search(window))


def intense_terms(text: str) -> list[str]:
    """Interval / high-intensity prescriptions that are not negated ("no intervals")."""
    return [m.group(0) for m in _INTENSE.finditer(text) if not _negated(text, m.start())]


def check_brief(text: str | None, decision: Decision) -> GuardrailResult:
    """Check one LLM brief against the rules decision."""
    if text is None or not text.strip():
        return GuardrailResult(ok=False, violations=["empty"])
    violations: list[str] = []
    sentences = split_sentences(text)
    if not MIN_SENTENCES <= len(sentences) <= MAX_SENTENCES:
        violations.append(f"sentences:{len(sentences)}")
    if len(text) > MAX_CHARS:
        violations.append(f"too_long:{len(text)}")
    tss = named_tss(text)
    if not tss and decision.kind != "rest":
        violations.append("no_tss")
    over = [t for t in tss if t > decision.tss_high]
    if over:
        violations.append(f"tss_over_cap:{max(over)}>{decision.tss_high}")
    zones = named_zones(text)
    high_zones = [z for z in zones if z > decision.max_zone]
    if high_zones:
        violations.append(f"zone_above_cap:Z{max(high_zones)}>Z{decision.max_zone}")
    if not decision.intervals_allowed:
        terms = intense_terms(text)
        if decision.max_zone < 4:
            terms += [m.group(0) for m in _SWEET_SPOT.finditer(text)
                      if not _negated(text, m.start())]
        if terms:
            violations.append(f"intensity_not_allowed:{terms[0].lower()}")
    if re.search(r"https?://|www\.", text, re.IGNORECASE):
        violations.append("link")
    return GuardrailResult(
        ok=not violations, violations=violations, sentences=len(sentences), tss_named=tss
    )
