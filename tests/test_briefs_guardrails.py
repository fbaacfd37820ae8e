"""Guardrails: LLM briefs checked against the rules decision (units; the hostile corpus
is in test_briefs_safety.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from veloready_pipeline.briefs.guardrails import (
    check_brief,
    intensity_terms,
    named_tss,
    named_zones,
    split_sentences,
)
from veloready_pipeline.briefs.inputs import BodyStress, make_brief_inputs
from veloready_pipeline.briefs.rules import Decision, decide_brief

DAY = dt.date(2026, 3, 10)


def decision(kind: str) -> Decision:
    base = {
        "athlete_id": "a1", "date": DAY, "data_date": DAY, "recovery": 72.0, "sleep_score": 80.0,
        "hrv_delta_pct": 3.0, "rhr_delta_pct": 0.0, "tsb": 3.0, "target_tss_low": 80.0,
        "target_tss_high": 100.0,
    }
    if kind == "rest":
        base["body_stress"] = BodyStress(severity="high", confidence=0.9, source="reported")
    elif kind == "deload":
        base["recovery"] = 35.0
    elif kind == "mixed":
        base["tsb"] = -10.0
    d = decide_brief(make_brief_inputs(**base))
    assert d.kind == kind
    return d


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two. Three.", 3),
        ("Aim for 1.5 hours. Easy.", 2),
        ("Rest! Really? Yes.", 3),
        ("Single sentence only", 1),
        ("Quote ends here.\" Next one.", 2),
    ],
)
def test_split_sentences(text: str, expected: int) -> None:
    assert len(split_sentences(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("about 70 TSS today", [70]),
        ("60-75 TSS", [60, 75]),
        ("60 to 75 TSS", [60, 75]),
        ("TSS of 55", [55]),
        ("TSS: 40", [40]),
        ("keep TSS under 30", [30]),
        ("your 7-day TSS of 420 is high, so 50 TSS today", [50]),
        ("you did 380 TSS this week", []),
        ("ride 90 min", []),
    ],
)
def test_named_tss(text: str, expected: list[int]) -> None:
    assert named_tss(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Z2", [2]), ("Z1-Z3", [1, 3]), ("zone 4", [4]), ("Z2 to Z3", [2, 3]), ("Zwift", []),
     ("Z 5", [5]), ("Z-5", [5]), ("zone five", [5]), ("zone V", [5]), ("zone Ⅵ", [6]),
     ("zona cinco", [5]), ("Zone fünf", [5]), ("zone vier", [4]), ("ゾーン5", [5]),
     ("Ｚ５", [5]), ("z\u200b5", [5]), ("the fifth zone", [5]), ("Z2-3", [2, 3]),
     ("level 4", [4]), ("зона 5", [5]), ("in Z1-Z2, 45 TSS", [1, 2]),
     ("Z2, 45 min", [2]), ("zones 2 and 3", [2, 3])],
)
def test_named_zones(text: str, expected: list[int]) -> None:
    assert sorted(set(named_zones(text))) == sorted(set(expected))


@pytest.mark.parametrize(
    ("text", "flagged"),
    [
        ("Do 4x8 min at VO2max", True),
        ("Some threshold intervals", True),
        ("No intervals today", True),  # negated or not: no negation windows
        ("Skip the sprints", True),
        ("Keep it steady, no hard efforts", True),
        ("Steady endurance", False),
        ("Have a carb snack before you start", False),
        ("Keep it to 40 TSS max, all in Z1-Z2", False),
        ("Easy spin, trace the coast and embrace the grace of the road", False),
    ],
)
def test_intensity_terms_ignore_negation(text: str, flagged: bool) -> None:
    assert bool(intensity_terms(text)) is flagged


GOOD = {
    "rest": "You're unwell, so rest today. If you move at all, keep it under 30 TSS of easy Z1.",
    "deload": "Recovery is low, so de-load. Keep it to 50 TSS in Z1-Z2, nice and easy.",
    "mixed": "Mixed signals today. Ride about 85 TSS in Z2 with a touch of Z3, smooth and "
             "steady. Fuel well.",
    "productive": "You're fresh and recovered. Hit 3x12 min at threshold in Z4 for about "
                  "100 TSS. Fuel with 60-90 g carbs per hour.",
}


@pytest.mark.parametrize("kind", list(GOOD))
def test_compliant_briefs_pass(kind: str) -> None:
    verdict = check_brief(GOOD[kind], decision(kind))
    assert verdict.ok, verdict.violations


@pytest.mark.parametrize(
    ("kind", "text", "violation"),
    [
        ("rest", "Feeling ill? Do 4x4 min VO2max intervals anyway. About 25 TSS.",
         "intensity_not_allowed"),
        ("rest", "Rest is for the weak. Ride 60 TSS in Z1.", "tss_over_cap"),
        ("rest", "Easy spin in Z2 for 20 TSS. Then rest.", "zone_above_cap"),
        ("deload", "Recovery is low. Do 70 TSS in Z2.", "tss_over_cap"),
        ("deload", "De-load today. Ride 45 TSS with some Z3 tempo.", "zone_above_cap"),
        ("mixed", "Mixed day. Do sweet spot for 80 TSS.", "intensity_not_allowed"),
        ("mixed", "Mixed day, 80 TSS in Z2-Z3. No intervals today.", "intervals_not_allowed"),
        ("rest", "Rest today, no VO2max. Keep it under 20 TSS.", "intensity_not_allowed"),
        ("mixed", "Mixed day, go steady in Z2.", "no_tss"),
        ("productive", "Go hard, 140 TSS in Z4. Fuel it.", "tss_over_cap"),
        ("productive", "Great day. Smash Z5 for 90 TSS.", "zone_above_cap"),
        ("productive", "Great day for 100 TSS in Z4.", "sentences"),
        ("productive", "Go. " * 4 + "100 TSS in Z2.", "sentences"),
        ("productive", "Ride 100 TSS in Z3. See https://example.com for more.", "link"),
        ("productive", "", "empty"),
        ("productive", None, "empty"),
    ],
)
def test_rule_breaking_briefs_are_rejected(kind: str, text: str | None, violation: str) -> None:
    verdict = check_brief(text, decision(kind))
    assert not verdict.ok
    assert any(v.startswith(violation) for v in verdict.violations), verdict.violations


def test_rest_day_may_skip_the_tss_number() -> None:
    assert check_brief("You're sick, so take the day off. Sleep and fluids.", decision("rest")).ok


def test_too_long_is_rejected() -> None:
    text = "Ride 90 TSS in Z2. " + "Really " * 120 + "easy."
    violations = check_brief(text, decision("productive")).violations
    assert any(v.startswith("too_long") for v in violations)
