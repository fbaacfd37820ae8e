"""The deterministic rules engine: the design's decision rules as plain Python.

It is both the offline default (no key, no endpoint: every brief comes from here) and
the referee for the LLM: the guardrails check each LLM brief against the decision made
here, and any brief that breaks it is replaced by the rules brief.

Decision rules from the design, highest priority first:

1. Body stress moderate or high (illness) -> rest, or at most 30 TSS of gentle Z1.
2. HRV up more than 100 % -> unusual; rest or very light.
3. HRV up >= 15 % means good recovery even if RHR is slightly up.
4. Recovery < 50 %, or (HRV <= -2 % and RHR >= +2 % and HRV < +15 %) -> de-load,
   <= 55 TSS, Z1-Z2. Recovery >= 66 % and TSB >= 0 -> productive session at the top of
   the target. Mixed signals -> about the middle of the target, stress fuelling and
   recovery.
5. Sleep score: 85-100 excellent, 70-84 good, 60-69 fair, < 60 poor.
6. Time-crunched -> a 45-60 min session (sweet spot, tempo, or high-cadence endurance).

Interpretations (the design leaves these open; each is tested):

* Rule 3 stands in for "recovery >= 66 %" in rule 4 and suppresses rule 4's de-load
  triggers; "slightly up" means RHR below +5 %. TSB >= 0 is still needed for a
  productive day, otherwise the day is mixed.
* Rule 5: a poor night (< 60) turns a productive day into a mixed one (a mixed signal
  by definition); fair or poor sleep adds sleep advice.
* Rule 6: time-crunched means less than 90 min available; the session is sweet spot on
  a productive day, tempo on a mixed day and high-cadence endurance on a de-load day,
  and the TSS cap shrinks to what fits in the time. Rest days stay rest days.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from veloready_pipeline.briefs.inputs import BriefInputs, round_to_5

RULES_VERSION = "r1"

REST_TSS_CAP = 30  # rule 1 / rule 2
DELOAD_TSS_CAP = 55  # rule 4
HRV_SPIKE_PCT = 100.0  # rule 2
HRV_GOOD_PCT = 15.0  # rule 3
RHR_SLIGHT_PCT = 5.0  # rule 3: "slightly up" is below this
RECOVERY_DELOAD = 50.0  # rule 4
RECOVERY_PRODUCTIVE = 66.0  # rule 4
HRV_STRAIN_PCT = -2.0  # rule 4
RHR_STRAIN_PCT = 2.0  # rule 4
TIME_CRUNCH_MIN = 90.0  # rule 6
CRUNCH_SESSION_MIN = (45, 60)  # rule 6
MIXED_SPREAD = 0.1  # mixed day: middle of the target +-10 %

# TSS per hour of the time-crunched sessions (IF^2 x 100): sweet spot IF 0.88,
# tempo IF 0.80, high-cadence endurance IF 0.65.
SESSION_TSS_PER_HOUR = {"sweet spot": 77, "tempo": 64, "high-cadence endurance": 42}

Kind = Literal["rest", "deload", "productive", "mixed"]
SleepBand = Literal["excellent", "good", "fair", "poor", "unknown"]


class Decision(BaseModel):
    """What the athlete should do today, and why.

    ``tss_high`` is the cap: no brief may name a larger TSS. ``max_zone`` and
    ``intervals_allowed`` bound the intensity a brief may prescribe.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    rule: str = Field(description="the deciding rule, e.g. '1-body-stress'")
    rules_fired: tuple[str, ...] = Field(description="every rule that applied, in order")
    tss_low: int = Field(ge=0, le=800)
    tss_high: int = Field(ge=0, le=800)
    tss_aim: int = Field(ge=0, le=800, description="the single number the brief names")
    zones: tuple[str, ...]
    max_zone: int = Field(ge=1, le=7)
    intervals_allowed: bool
    session: str
    duration_min: tuple[int, int] | None = None
    fuelling: str | None = None
    sleep_band: SleepBand
    sleep_advice: str | None = None
    time_crunched: bool = False
    why: tuple[str, ...] = Field(description="the decisive reasons the brief states")
    reasons: tuple[str, ...] = Field(description="every reason, for the record")


def sleep_band(score: float | None) -> SleepBand:
    """Rule 5: the design's sleep-score bands."""
    if score is None:
        return "unknown"
    if score >= 85:
        return "excellent"
    if score >= 70:
        return "good"
    if score >= 60:
        return "fair"
    return "poor"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0f}%"


def decide_brief(inputs: BriefInputs) -> Decision:
    """Apply the hierarchical rules to one athlete's inputs."""
    fired: list[str] = []
    why: list[str] = []  # the decisive reasons, said in the brief
    hrv = inputs.hrv_delta_pct
    rec = inputs.recovery
    band = sleep_band(inputs.sleep_score)
    low, high = inputs.target_tss_low, inputs.target_tss_high
    stress = inputs.body_stress
    sleep_reason = None if band == "unknown" else f"sleep was {band} ({inputs.sleep_score:.0f})"
    rec_reason = None if rec is None else f"recovery is {rec:.0f}%"
    tsb_reason = f"TSB is {inputs.tsb:+.0f}"

    kind: Kind
    rule: str
    if stress.severity in ("moderate", "high"):
        kind, rule = "rest", "1-body-stress"
        why.append(f"body stress is {stress.severity} ({stress.confidence:.0%} confidence)")
    elif hrv is not None and hrv > HRV_SPIKE_PCT:
        kind, rule = "rest", "2-hrv-spike"
        why.append(f"HRV is {_pct(hrv)} on baseline, an unusual jump worth respecting")
    else:
        kind, rule = _recovery_rules(inputs, fired, why, rec_reason, tsb_reason)
    fired.append(rule)

    if kind == "productive" and band == "poor":
        kind, rule = "mixed", "5-poor-sleep"
        fired.append(rule)
        why = [why[0], f"but {sleep_reason}"]
    elif band in ("fair", "poor"):
        fired.append("5-sleep-advice")
        if len(why) < 2:
            why.append(str(sleep_reason))

    crunched = (
        inputs.time_available_min is not None
        and inputs.time_available_min < TIME_CRUNCH_MIN
        and kind != "rest"
    )
    reasons = list(why)
    for extra in (rec_reason, tsb_reason, sleep_reason):
        if extra and not any(extra in r for r in reasons):
            reasons.append(extra)
    if crunched:
        fired.append("6-time-crunched")
        reasons.append(f"only {inputs.time_available_min:.0f} min available")

    return _prescribe(
        inputs, kind, rule, tuple(fired), tuple(why), tuple(reasons), band, crunched, low, high
    )


def _recovery_rules(inputs: BriefInputs, fired: list[str], why: list[str],
                    rec_reason: str | None, tsb_reason: str) -> tuple[Kind, str]:
    """Rules 3 and 4 (no body stress, no HRV spike): de-load, productive or mixed."""
    hrv = inputs.hrv_delta_pct
    rhr = inputs.rhr_delta_pct
    rec = inputs.recovery
    kind: Kind
    good_hrv = (
        hrv is not None and hrv >= HRV_GOOD_PCT and (rhr is None or rhr < RHR_SLIGHT_PCT)
    )
    if good_hrv:
        fired.append("3-hrv-up")
    strain = (
        hrv is not None
        and rhr is not None
        and hrv <= HRV_STRAIN_PCT
        and rhr >= RHR_STRAIN_PCT
        and hrv < HRV_GOOD_PCT
    )
    low_recovery = rec is not None and rec < RECOVERY_DELOAD
    good_reason = f"HRV is up {hrv:.0f}% on your baseline" if good_hrv else rec_reason
    if not good_hrv and (low_recovery or strain):
        kind = "deload"
        rule = "4-low-recovery" if low_recovery else "4-hrv-rhr-strain"
        if low_recovery:
            why.append(f"recovery is only {rec:.0f}%")
        if strain:
            why.append(f"HRV {_pct(hrv)} with resting HR {_pct(rhr)}")
    elif (good_hrv or (rec is not None and rec >= RECOVERY_PRODUCTIVE)) and inputs.tsb >= 0:
        kind, rule = "productive", "4-productive"
        why += [str(good_reason), tsb_reason]
    elif good_hrv or (rec is not None and rec >= RECOVERY_PRODUCTIVE):
        kind, rule = "mixed", "4-mixed"
        why.append(f"{good_reason} but you're carrying fatigue ({tsb_reason})")
    else:
        kind, rule = "mixed", "4-mixed"
        why += [rec_reason or "no recovery score today", tsb_reason]
    return kind, rule


def _prescribe(
    inputs: BriefInputs,
    kind: Kind,
    rule: str,
    fired: tuple[str, ...],
    why: tuple[str, ...],
    reasons: tuple[str, ...],
    band: SleepBand,
    crunched: bool,
    low: float,
    high: float,
) -> Decision:
    """Turn the kind of day into numbers: TSS range, zones, session, fuelling."""
    duration: tuple[int, int] | None = None
    zones: tuple[str, ...]
    easy_plan = kind in ("productive", "mixed") and high <= REST_TSS_CAP
    if kind == "rest":
        t_low, t_high, aim = 0.0, float(REST_TSS_CAP), float(REST_TSS_CAP)
        zones, max_zone, intervals = ("Z1",), 1, False
        session = "rest day, or an easy Z1 spin"
    elif kind == "deload":
        t_high = float(min(DELOAD_TSS_CAP, high))
        t_low = max(0.0, t_high - 20)
        aim = t_high
        zones, max_zone, intervals = ("Z1", "Z2"), 2, False
        session = "easy endurance ride"
    elif easy_plan:
        # The plan itself is an easy day: good signals never turn it into a hard one.
        t_low, t_high, aim = low, high, high
        zones, max_zone, intervals = ("Z1", "Z2"), 2, False
        session = "easy spin"
    elif kind == "productive":
        mid = round_to_5((low + high) / 2)
        t_low, t_high, aim = mid, high, high
        zones, max_zone, intervals = ("Z2", "Z3", "Z4"), 4, True
        session = "quality session"
    else:
        mid = round_to_5((low + high) / 2)
        t_low = round_to_5(mid * (1 - MIXED_SPREAD))
        t_high = min(round_to_5(mid * (1 + MIXED_SPREAD)), high)  # never above the target
        aim = mid
        zones, max_zone, intervals = ("Z2", "Z3"), 3, False
        session = "steady endurance ride"

    if crunched and not easy_plan:
        available = int(inputs.time_available_min or 0)
        d_high = min(CRUNCH_SESSION_MIN[1], available)
        d_low = min(CRUNCH_SESSION_MIN[0], d_high)
        duration = (d_low, d_high)
        session = {"productive": "sweet spot", "mixed": "tempo"}.get(
            kind, "high-cadence endurance"
        )
        fit = round_to_5(SESSION_TSS_PER_HOUR[session] * d_high / 60)
        t_high = min(t_high, fit)
        aim = min(aim, t_high)
        t_low = min(t_low, t_high)
        if session == "sweet spot":
            zones, max_zone = ("Z3", "Z4"), 4

    # An easy planned day needs no fuelling plan (only the alcohol reminder, if any).
    fuelling = _fuelling(inputs, "deload" if easy_plan else kind, t_high, duration)
    sleep_advice = None
    if band in ("fair", "poor") or (inputs.sleep_debt_h or 0) >= 5:
        sleep_advice = "get to bed early tonight"

    # Whole TSS; the cap binds: aim <= cap, low <= aim (targets need not be multiples of 5).
    cap = int(round(t_high))
    aim_i = min(int(round(aim)), cap)
    return Decision(
        kind=kind,
        rule=rule,
        rules_fired=fired,
        tss_low=min(int(round(t_low)), aim_i),
        tss_high=cap,
        tss_aim=aim_i,
        zones=zones,
        max_zone=max_zone,
        intervals_allowed=intervals,
        session=session,
        duration_min=duration,
        fuelling=fuelling,
        sleep_band=band,
        sleep_advice=sleep_advice,
        time_crunched=crunched,
        why=why,
        reasons=reasons,
    )


def _fuelling(
    inputs: BriefInputs, kind: Kind, tss_high: float, duration: tuple[int, int] | None
) -> str | None:
    """Fuelling advice only when it matters: hard days, mixed days, illness, alcohol."""
    if kind == "rest" and inputs.body_stress.severity in ("moderate", "high"):
        advice = "keep eating normally and drink plenty"
    elif kind == "mixed":
        advice = "fuel the ride with about 60 g of carbs per hour and get protein in after"
    elif kind == "productive" and (tss_high >= 80 or (duration and duration[1] >= 90)):
        advice = "fuel it with 60-90 g of carbs per hour"
    elif kind == "productive":
        advice = "have a carb snack before you start"
    else:
        advice = None
    if inputs.alcohol:
        extra = "extra water after last night's drinks"
        advice = f"{advice}, plus {extra}" if advice else f"drink {extra}"
    return advice


def _zones_text(zones: tuple[str, ...]) -> str:
    return zones[0] if len(zones) == 1 else f"{zones[0]}-{zones[-1]}"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def write_rules_brief(inputs: BriefInputs, decision: Decision) -> str:
    """A 2-3 sentence brief in a coach's texting tone, straight from the decision.

    Free text (the planned workout) is never copied in: it is athlete data and could
    break the sentence count or smuggle in anything.
    """
    d = decision
    why = ", ".join(d.why)
    zones = _zones_text(d.zones)
    minutes = ""
    if d.duration_min:
        lo, hi = d.duration_min
        minutes = f"{hi} min" if lo == hi else f"{lo}-{hi} min"
    tail_parts = [p for p in (d.fuelling, d.sleep_advice) if p]
    tail = _capitalise(", and ".join(tail_parts)) + "." if tail_parts else ""

    if d.kind == "rest":
        if d.rule == "1-body-stress":
            first = f"Your body is fighting something: {why}, so today is a rest day."
        else:
            first = f"Something's off: {why}, so take it as a rest day."
        second = f"If you need to move, keep it under {d.tss_high} TSS of gentle Z1 spinning."
    elif d.kind == "deload":
        first = f"Go easy today: {why}, so it's a de-load day."
        if minutes:
            second = (
                f"Keep it to {minutes} of high-cadence endurance in {zones}, "
                f"{d.tss_high} TSS max."
            )
        else:
            second = f"Keep it to {d.tss_high} TSS max, all in {zones}."
    elif d.session == "easy spin":
        first = f"Your plan has an easy day and that's what you'll do: {why}."
        second = f"Spin about {d.tss_aim} TSS in {zones} and enjoy it."
    elif d.kind == "productive":
        first = f"Green light today: {why}, so go for the top of your target."
        if minutes:
            second = f"Do a {minutes} sweet spot session in {zones} for about {d.tss_aim} TSS."
        else:
            second = f"Aim for about {d.tss_aim} TSS with the hard work in {zones}."
    else:
        first = f"Mixed signals today: {why}, so keep it steady in the middle of your target."
        if minutes:
            second = f"Do a {minutes} tempo ride in {zones} for about {d.tss_aim} TSS."
        else:
            second = f"Aim for about {d.tss_aim} TSS in {zones}, smooth and steady."
    return " ".join(s for s in (first, second, tail) if s)
