"""Guardrails: judge an LLM brief against the rules engine's decision, by structure.

The LLM writes the words; the rules engine owns the decision. The model answers with a
structured brief (`StructuredBrief`: session type, highest zone, TSS, intervals yes/no,
race yes/no, text) and `check_reply` refuses it unless all of these hold:

1. **structure** - the reply is one JSON object of exactly that schema;
2. **fields vs decision** - TSS within the cap, zone and session type within the zone
   ceiling, intervals only on a day that allows them, never a race;
3. **text vs decision** (`check_brief`) - everything the text names is read into a zone
   level and judged against the ceiling: zone numbers in any spelling (Z5, Z 5, zone
   five, zone V, zona cinco, Zone fuenf, full-width digits, look-alike letters),
   percent of FTP, perceived effort (RPE 9, 9/10), and intensity words and idioms
   (tempo, threshold, VO2max, sprint, race, attack, "all out", "full send", ...); on
   rest and de-load days also any power target and heart-rate targets above 140 bpm.
   There is **no negation handling**: "don't rest, do VO2max" and "no VO2max today" are
   both refused on a day whose ceiling is Z1-Z2. A word costs a nicer sentence at worst;
   a missed one could send an ill athlete out for intervals. The word list cannot be
   complete (a new idiom can slip through it), which is why the fields, the zone and
   percent readings and the form checks stand beside it;
4. **text vs fields** - the text names no zone, TSS, intervals or race beyond what its
   own fields declare (a model cannot declare "rest" and write "sprints");
5. **form** - 2-3 sentences, not too long, no link, no instruction-like text, no
   hidden (zero-width / format) characters and no letters outside the Latin script.

A refused brief is replaced by the rules brief and the record keeps the violations.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from veloready_pipeline.briefs.rules import Decision

MIN_SENTENCES = 2
MAX_SENTENCES = 3
MAX_CHARS = 600

# ------------------------------------------------------------------ the structured brief

SessionType = Literal[
    "rest", "recovery", "endurance", "tempo", "sweet_spot", "threshold", "vo2max",
    "anaerobic", "sprint", "race",
]
SESSION_ZONE: dict[SessionType, int] = {
    "rest": 1, "recovery": 1, "endurance": 2, "tempo": 3, "sweet_spot": 4, "threshold": 4,
    "vo2max": 5, "anaerobic": 6, "sprint": 7, "race": 7,
}
# Upper bound of each power zone in % of FTP (Z7 is open).
ZONE_TOP_PCT = {1: 55, 2: 75, 3: 90, 4: 105, 5: 120, 6: 150, 7: 10_000}


class StructuredBrief(BaseModel):
    """What the model must return: the brief's prescription as fields, and its text."""

    model_config = ConfigDict(extra="forbid", strict=True)

    session_type: SessionType
    max_zone: int = Field(ge=1, le=7, description="the highest power zone the brief prescribes")
    tss: int = Field(ge=0, le=800, description="the largest TSS the text names (target or cap)")
    intervals: bool
    race: bool
    text: str = Field(min_length=1, max_length=MAX_CHARS)


def allowed_session_types(decision: Decision) -> list[SessionType]:
    """Session types within the decision's zone ceiling (what the prompt offers)."""
    return [s for s, z in SESSION_ZONE.items()
            if z <= decision.max_zone and s != "race"
            and (decision.intervals_allowed or s not in ("vo2max", "anaerobic", "sprint"))]


def structured_from_decision(decision: Decision, text: str) -> StructuredBrief:
    """The fields a compliant brief declares for ``decision`` (tests, few-shot)."""
    tss = max(named_tss(text) or [0])
    zones = named_zones(text)
    return StructuredBrief(
        session_type=allowed_session_types(decision)[-1] if decision.kind != "rest" else "rest",
        max_zone=max(zones) if zones else 1, tss=tss, intervals=False, race=False, text=text,
    )


# ------------------------------------------------------------------ normalisation

# Letters of other scripts that look like Latin ones (Greek, Cyrillic): folded so the
# word checks see "vo2max" in "VО2max" (Cyrillic O). Such text is refused anyway
# (foreign_script); the fold makes the refusal name what was hidden.
_CONFUSABLES = str.maketrans({
    "α": "a", "β": "b", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "μ": "m",
    "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ς": "s",
    "а": "a", "в": "b", "е": "e", "і": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s",
    "ԛ": "q", "ԝ": "w", "ɡ": "g", "ı": "i", "ȷ": "j",
})
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                       "@": "a", "$": "s"})
_LATIN_NAME = re.compile(r"LATIN (?:SMALL |CAPITAL )?LETTER (?:SMALL CAPITAL )?([A-Z])\b")
_INVISIBLE_EXTRA = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u034f"}


@dataclass(frozen=True)
class Normalised:
    """The text as the checks read it, in variants, plus what was odd about it."""

    plain: str  # NFKC, casefolded, accents and invisible characters removed
    folded: str  # + look-alike letters folded to Latin, any script's digits to 0-9
    leet: str  # + digits inside words read as letters (thr3sh0ld -> threshold)
    joined: str  # + split words joined (s p r i n t, in-ter-vals, v.o.2)
    hidden: tuple[str, ...]  # code points of invisible / format characters
    foreign: tuple[str, ...]  # code points of letters outside the Latin script


def _codepoint(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def _fold_char(ch: str) -> str:
    if ch.isascii():
        return ch
    cat = unicodedata.category(ch)
    if cat == "Nd":
        return str(unicodedata.decimal(ch, ""))
    if cat.startswith("L"):
        m = _LATIN_NAME.match(unicodedata.name(ch, ""))
        if m:
            return m.group(1).lower()
        return ch.translate(_CONFUSABLES)
    return ch


def _leet_word(m: re.Match[str]) -> str:
    word = m.group(0)
    letters = sum(c.isalpha() for c in word)
    return word.translate(_LEET) if letters >= 2 and not word.isalpha() else word


def normalise(text: str) -> Normalised:
    """Read ``text`` the way a person would see it, whatever encoding tricks it uses."""
    hidden = tuple(dict.fromkeys(
        _codepoint(c) for c in text
        if unicodedata.category(c) == "Cf" or c in _INVISIBLE_EXTRA
    ))
    t = "".join(c for c in text if unicodedata.category(c) != "Cf" and c not in _INVISIBLE_EXTRA)
    t = unicodedata.normalize("NFKC", t)
    t = "".join(c for c in unicodedata.normalize("NFKD", t)
                if unicodedata.category(c) not in ("Mn", "Me"))
    t = unicodedata.normalize("NFKC", t).casefold()
    foreign = tuple(dict.fromkeys(
        _codepoint(c) for c in t
        if unicodedata.category(c).startswith("L") and not c.isascii()
        and not unicodedata.name(c, "").startswith("LATIN")
    ))
    folded = "".join(_fold_char(c) for c in t)
    leet = re.sub(r"[a-z0-9@$]+", _leet_word, folded)
    joined = re.sub(r"(?<=[a-z])[-_.*'’·•|~^]+(?=[a-z])", "", leet)
    joined = re.sub(r"\b(?:\w[\s.\-_*·•]+){2,}\w\b",
                    lambda m: re.sub(r"[\s.\-_*·•]+", "", m.group(0)), joined)
    return Normalised(t, folded, leet, joined, hidden, foreign)


# ------------------------------------------------------------------ sentences and TSS

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
_WEEKLY_BEFORE = re.compile(r"(?:\d+-day|week(?:ly)?|last \d+ days|7d)\W*$", re.IGNORECASE)
_WEEKLY_AFTER = re.compile(r"^\W*(?:this|last|over|in the|per|a)\s+(?:\d+\s+days|week)",
                           re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Sentences, split at ., ! or ? followed by space (decimals like 1.5 stay whole)."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text.strip())) if s]


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


# ------------------------------------------------------------------ zones in any spelling

_NUMBER_WORDS: dict[str, int] = {}
for _value, _words in {
    1: "one un une uno una eins ein een um uma i 一",
    2: "two deux dos due zwei twee dois duas ii 二",
    3: "three trois tres tre drei drie iii 三",
    4: "four quatre cuatro quattro quatro vier iv 四",
    5: "five cinq cinco cinque funf fuenf vijf v 五",
    6: "six seis sei sechs zes vi 六",
    7: "seven sept siete sette sete sieben zeven vii 七",
}.items():
    for _w in _words.split():
        _NUMBER_WORDS[_w] = _value
_ORDINALS = {
    "first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4,
    "fifth": 5, "5th": 5, "sixth": 6, "6th": 6, "seventh": 7, "7th": 7, "quinta": 5,
    "quinto": 5, "cinquieme": 5, "funfte": 5, "quarta": 4, "quarto": 4, "sexta": 6,
}
_NUM = (r"(?:[0-9]+|" + "|".join(sorted((re.escape(w) for w in _NUMBER_WORDS),
                                          key=len, reverse=True)) + r")(?![a-z0-9])")
_ZONE_WORD = (r"(?:zones?|zonen|zonas?|zon|sone|soner|zonă|bereich|level|lvl|niveau|nivel|"
              r"livello|stufe|ソーン|区间|区|зона|зоне|зону|ζωνη)")
_JOIN = r"\s*(?:-|–|—|to|through|thru|a|al|bis|à|/|and|or|y|e|und|et|,)\s*"
_UNIT_AFTER = (r"(?![0-9]|\s*(?:min|h\b|hours?|hrs?|tss|%|x|×|sec|s\b|w\b|watts|km|mi|g\b|rpm|"
               r"times|sets|reps|blocks|days?|weeks?))")
# The second end of a range: with its own zone word or Z ("Z2 to Z3", "zone 2 or zone 3"),
# or a bare single digit ("Z2-3", "zones 2 and 3"), never a number with a unit ("Z2, 45 TSS").
_ZONE_RE = re.compile(
    rf"(?<![a-z]){_ZONE_WORD}\s*[-.:#=]?\s*({_NUM})"
    rf"(?:{_JOIN}(?:{_ZONE_WORD}\s*[-.:#=]?\s*|z\s*)({_NUM})|{_JOIN}([0-9]){_UNIT_AFTER})?"
)
_Z_WORDS = "|".join(w for w in _NUMBER_WORDS if len(w) > 2 and w.isascii())
_Z_WORD_RE = re.compile(rf"(?<![a-z0-9])z(?:\s+|\s*[-.:#]\s*)({_Z_WORDS})(?![a-z0-9])")
_Z_RE = re.compile(
    r"(?<![a-z0-9])z\s*[-.:#]?\s*([0-9]+)(?![0-9])"
    rf"(?:{_JOIN}(?:{_ZONE_WORD}\s*|z\s*)([0-9]+)(?![0-9])|{_JOIN}([0-9]){_UNIT_AFTER})?"
)
_ORDINAL_RE = re.compile(
    r"(?<![a-z0-9])(" + "|".join(_ORDINALS) + rf")\s+(?:power\s+|hr\s+)?{_ZONE_WORD}"
)


def _zone_value(token: str) -> int:
    return int(token) if token.isdigit() else _NUMBER_WORDS[token]


def _zones_in(text: str) -> list[int]:
    out: list[int] = []
    for pattern in (_ZONE_RE, _Z_RE, _Z_WORD_RE):
        for m in pattern.finditer(text):
            out.extend(_zone_value(g) for g in m.groups() if g is not None)
    out.extend(_ORDINALS[m.group(1)] for m in _ORDINAL_RE.finditer(text))
    return out


def named_zones(text: str, norm: Normalised | None = None) -> list[int]:
    """Every power zone the text names, in any spelling (Z2, Z1-Z3, zone five, zone V,
    zona cinco, Zone fuenf, full-width digits, ...); a range counts both ends."""
    norm = norm or normalise(text)
    out: list[int] = []
    for variant in (norm.plain, norm.folded, norm.leet, norm.joined):
        out.extend(_zones_in(variant))
    return out


# ------------------------------------------------------------------ intensity words

@dataclass(frozen=True)
class Term:
    """An intensity word: the zone it implies and whether it means intervals."""

    term: str
    level: int
    interval: bool = False


def _lexicon() -> list[tuple[re.Pattern[str], int, bool]]:
    table: list[tuple[str, int, bool]] = [
        # moderate intensity (Z3): refused where the ceiling is Z1-Z2
        (r"tempo\w*", 3, False),
        (r"hard(?:er|est)?|harte?n?|duro|dura|fuerte", 3, False),
        (r"push(?:ing|es)?", 3, False),
        (r"intens\w*", 3, False),
        (r"fast(?:er|est)?|speed\w*|schnell\w*|rapid[oa]|brisk\w*", 3, False),
        (r"pick(?:ing)? up the pace|up the pace|pacy", 3, False),
        (r"effort(?:s)? (?:at|above|over) (?:z|zone)", 3, False),
        # threshold (Z4)
        (r"thresh\w*|umbral\w*|soglia|seuil\w*|schwelle\w*|drempel\w*|limiar\w*", 4, False),
        (r"sweet\s*-?\s*spot\w*|sst", 4, False),
        (r"ftp|lthr|lt2|lactate\w*|critical power", 4, False),
        (r"tt|tt pace", 4, False),
        (r"over\s*-?\s*unders?|criss\s*-?\s*cross\w*", 4, True),
        # intervals (refused where the decision allows none)
        (r"interval\w*|intervall\w*|intervalo\w*|intervalli|fractionn\w*", 4, True),
        (r"repeats?|repetitions?|reps|efforts|tabata|fartlek\w*|surges?|surging", 4, True),
        (r"micro\s*-?\s*bursts?|bursts?|pyramids?", 4, True),
        (r"[0-9]+\s*[x×*]\s*[0-9]+|[0-9]+\s*by\s*[0-9]+\s*(?:min|minutes?|sec|s)", 4, True),
        (r"on\s*/\s*offs?", 4, True),
        # VO2max and maximal efforts (Z5)
        (r"vo2\w*|v02\w*|max(?:imal|imum)?\s*aerobic\w*|aerobic capacity|hiit", 5, False),
        (r"high\s*-?\s*intensity", 5, False),
        (r"all\s*-?\s*out|flat\s*-?\s*out|full\s*-?\s*gas|full\s*-?\s*throttle", 5, False),
        (r"max(?:imal|imum)?\s+(?:efforts?|power|watts|intensity|heart rate|hr|pace)", 5, False),
        (r"maximal\w*|red\s*-?\s*lin\w*|in the red|empty (?:the|your) tank", 5, False),
        (r"bury yourself|dig deep|pain cave|suffer\w*|go(?:ing)? deep", 5, False),
        (r"smash\w*|hammer\w*|crush\w*|rip (?:it|their|the|your)\w*|send it", 5, False),
        (r"vollgas|a tope|a tutta|a fond|a bloc|fond de train", 5, False),
        (r"full\s*-?\s*send\w*|max(?:ed|ing)? (?:it )?out|give it (?:everything|all)\w*|"
         r"all (?:you'?ve|you) got|leave it all|inside out|(?:make|let) it hurt|hurt\w*|"
         r"floor it|like you stole it|no holds barred|crank (?:it )?up|turn it up|"
         r"ramp it up|chase\w* (?:down|them|him|her|the|your)|go ham|beast mode|spicy|"
         r"lungs? (?:burn|on fire)\w*|legs? (?:burn|on fire)\w*|drop the (?:group|bunch)",
         5, False),
        # anaerobic, attacks and tests (Z6)
        (r"anaerob\w*|neuromuscular\w*", 6, False),
        (r"attack\w*|ataque\w*|attacc\w*|attaque\w*|angriff\w*|attacke\w*|breakaway\w*", 6, False),
        (r"break away|bridge (?:the|a) gap|kom|qom|personal (?:best|record)", 6, False),
        (r"ftp test\w*|ramp test\w*|test (?:your|the) ftp", 6, False),
        # sprints and races (Z7): beyond any ceiling the rules engine sets
        (r"sprint\w*|esprint\w*|standing starts?|jumps", 7, True),
        (r"rac(?:e|es|ed|ing|er|ers)|crits?|criterium\w*|time\s*-?\s*trial\w*", 7, False),
        (r"carrera\w*|gara|gare|rennen|wettkampf\w*|competi\w*|compete\w*", 7, False),
        (r"chain\s*-?\s*gang\w*|hammerfest\w*", 7, False),
    ]
    return [(re.compile(rf"(?<![a-z0-9])(?:{p})(?![a-z0-9])"), lvl, iv) for p, lvl, iv in table]


_LEXICON = _lexicon()
_RACE_LEVEL = 7

_PCT_WORD = r"(?:%|percent|per\s*cent|pct|por\s*ciento|prozent|pour\s*cent|per\s*cento|procent)"
_PCT_OF = (r"(?:ftp|threshold|cp|critical power|lthr|max(?:imum)?(?:\s*(?:hr|heart rate))?|"
           r"mhr|hrmax|map|vo2\s*max|umbral|schwelle|seuil|soglia|potencia|leistung)")
_PCT_FTP = re.compile(
    rf"([0-9]{{1,3}}(?:[.,][0-9]+)?)\s*{_PCT_WORD}\s*(?:of\s+(?:your\s+|the\s+)?|de\s+(?:tu\s+|su\s+"
    rf"|la\s+)?|del\s+|von\s+(?:deiner\s+|der\s+)?|du\s+|della\s+|di\s+|an\s+)?{_PCT_OF}"
)
_FTP_PCT = re.compile(rf"(?:ftp|threshold)\s*(?:at|@|of|:|=|by)?\s*([0-9]{{1,3}})\s*{_PCT_WORD}")
_FTP_MULT = re.compile(r"([0-9](?:[.,][0-9]+)?)\s*[x×*]\s*(?:your\s+)?(?:ftp|threshold)")


def ftp_percents(text: str) -> list[float]:
    """Every intensity given as a percentage (or multiple) of FTP, threshold or max."""
    out = [float(m.group(1).replace(",", ".")) for p in (_PCT_FTP, _FTP_PCT)
           for m in p.finditer(text)]
    out += [100 * float(m.group(1).replace(",", ".")) for m in _FTP_MULT.finditer(text)]
    return out


_RPE = re.compile(r"(?<![a-z0-9])(?:rpe|borg)\s*(?:of|at|:|=|~)?\s*([0-9]{1,2})(?![0-9])|"
                  r"(?<![0-9./])([0-9]{1,2})\s*(?:/|out of)\s*10(?![0-9])"
                  r"(?!\s*(?:nights?|days?|times?|sessions?|rides?|weeks?))")
# Perceived effort 1-10 as a power zone (roughly: 1-2 Z1, 3-4 Z2, 5-6 Z3, 7 Z4, 8 Z5,
# 9 Z6, 10 Z7).
_RPE_ZONE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 5, 9: 6, 10: 7}
_WATTS = re.compile(r"(?<![a-z0-9.])([0-9]{2,4})\s*(?:w|watts?)(?![a-z0-9])")
_BPM = re.compile(r"(?<![a-z0-9.])([0-9]{2,3})\s*(?:bpm|beats)(?![a-z0-9])")
LOW_DAY_MAX_BPM = 140  # a heart-rate target above this is no rest or de-load day


def rpe_zones(text: str) -> list[int]:
    """Perceived-effort targets (RPE 8, 9/10 effort) as power zones."""
    out = []
    for m in _RPE.finditer(text):
        value = int(m.group(1) or m.group(2))
        out.append(_RPE_ZONE.get(min(max(value, 1), 10), 7))
    return out


def pct_zone(pct: float) -> int:
    """The power zone a percentage of FTP falls in."""
    return next(z for z, top in sorted(ZONE_TOP_PCT.items()) if pct <= top)


def intensity_terms(text: str, norm: Normalised | None = None) -> list[Term]:
    """Every intensity word in the text, negated or not ("no intervals" counts)."""
    norm = norm or normalise(text)
    out: dict[str, Term] = {}
    for variant in (norm.folded, norm.leet, norm.joined):
        variant = _FTP_MULT.sub(" ", _FTP_PCT.sub(" ", _PCT_FTP.sub(" ", variant)))
        for pattern, level, interval in _LEXICON:
            for m in pattern.finditer(variant):
                term = " ".join(m.group(0).split())
                out.setdefault(term, Term(term, level, interval))
    return list(out.values())


# ------------------------------------------------------------------ instruction-like text

_INJECTION = re.compile(
    r"ignor\w*\s+(?:\w+\s+){0,3}(?:instruction|rule|prompt|coach|decision|previous|above|"
    r"system|limit)\w*|disregard\w*|system prompt|developer mode|jailbreak\w*|"
    r"new instructions?|as an ai\b|language model|override\w*|<\s*/?\s*[a-z_]+\s*>|```|"
    r"athlete_data|athlete_free_text|</?decision"
)
_REST_CONTRADICTED = re.compile(
    r"(?:skip|skipping|ignore|forget|cancel|scrap|ditch|no|don'?t|do not|never|instead of|"
    r"without)\s+(?:the\s+|your\s+|a\s+|any\s+|that\s+)?rest(?:ing|ed|s)?\b|"
    r"rest is for (?:the )?(?:weak|wimps|quitters|losers)|"
    r"rest (?:day )?(?:is|can) (?:cancel|overrat|optional|wait)\w*"
)


# ------------------------------------------------------------------ verdicts

@dataclass
class GuardrailResult:
    """The verdict on one brief (``brief`` is the parsed reply, when it parsed)."""

    ok: bool
    violations: list[str] = field(default_factory=list)
    sentences: int = 0
    tss_named: list[int] = field(default_factory=list)
    brief: StructuredBrief | None = None

    @property
    def reason(self) -> str:
        """One line for the record: ``guardrail:<violation>,<violation>...``."""
        return "guardrail:" + ",".join(self.violations)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass
class _Named:
    """What a brief's text names: TSS, zones, FTP percents, RPE zones, intensity terms."""

    tss: list[int]
    zones: list[int]
    pcts: list[float]
    rpes: list[int]
    terms: list[Term]

    @classmethod
    def of(cls, text: str, norm: Normalised) -> _Named:
        return cls(tss=named_tss(norm.folded), zones=named_zones(text, norm),
                   pcts=ftp_percents(norm.folded), rpes=rpe_zones(norm.folded),
                   terms=intensity_terms(text, norm))

    @property
    def intervals(self) -> list[Term]:
        return [t for t in self.terms if t.interval]


def check_brief(
    text: str | None, decision: Decision, structured: StructuredBrief | None = None
) -> GuardrailResult:
    """Check a brief's text against the decision (and against its own fields, if given)."""
    if text is None or not text.strip():
        return GuardrailResult(ok=False, violations=["empty"])
    norm = normalise(text)
    sentences = split_sentences(text)
    named = _Named.of(text, norm)
    violations = _form_violations(text, norm, sentences)
    violations += _cap_violations(norm, named, decision)
    if structured is not None:
        violations += _disagreements(named, structured)
    violations = _dedupe(violations)
    return GuardrailResult(
        ok=not violations, violations=violations, sentences=len(sentences),
        tss_named=named.tss, brief=structured,
    )


def _form_violations(text: str, norm: Normalised, sentences: list[str]) -> list[str]:
    """Hidden or foreign characters, length, links and instruction-like text."""
    violations: list[str] = []
    if norm.hidden:
        violations.append(f"hidden_characters:{' '.join(norm.hidden[:3])}")
    if norm.foreign:
        violations.append(f"foreign_script:{' '.join(norm.foreign[:3])}")
    if not MIN_SENTENCES <= len(sentences) <= MAX_SENTENCES:
        violations.append(f"sentences:{len(sentences)}")
    if len(text) > MAX_CHARS:
        violations.append(f"too_long:{len(text)}")
    if re.search(r"https?://|www\.", norm.folded):
        violations.append("link")
    injection = _INJECTION.search(norm.folded) or _INJECTION.search(norm.joined)
    if injection:
        violations.append(f"injection:{injection.group(0)[:40]}")
    return violations


def _cap_violations(norm: Normalised, named: _Named, decision: Decision) -> list[str]:
    """What the text names against the decision's caps (TSS, zone, intervals, rest)."""
    violations: list[str] = []
    cap_zone = decision.max_zone
    tss, zones, pcts, rpes = named.tss, named.zones, named.pcts, named.rpes
    if not tss and decision.kind != "rest":
        violations.append("no_tss")
    over = [t for t in tss if t > decision.tss_high]
    if over:
        violations.append(f"tss_over_cap:{max(over)}>{decision.tss_high}")
    if zones and max(zones) > cap_zone:
        violations.append(f"zone_above_cap:Z{max(zones)}>Z{cap_zone}")
    if pcts and max(pcts) > ZONE_TOP_PCT[cap_zone]:
        violations.append(f"ftp_pct_above_cap:{max(pcts):g}%>{ZONE_TOP_PCT[cap_zone]}%")
    if rpes and max(rpes) > cap_zone:
        violations.append(f"rpe_above_cap:Z{max(rpes)}>Z{cap_zone}")
    if cap_zone <= 2:  # rest and de-load days: no power or heart-rate targets to chase
        violations += _low_day_targets(norm)
    high = [t for t in named.terms if t.level > cap_zone]
    if high:
        worst = max(high, key=lambda t: t.level)
        violations.append(f"intensity_not_allowed:{worst.term}(Z{worst.level})>Z{cap_zone}")
    intervals = named.intervals
    if intervals and not decision.intervals_allowed:
        violations.append(f"intervals_not_allowed:{intervals[0].term}")
    if decision.kind == "rest":
        contradicted = (_REST_CONTRADICTED.search(norm.folded)
                        or _REST_CONTRADICTED.search(norm.joined))
        if contradicted:
            violations.append(f"rest_contradicted:{contradicted.group(0)}")
    return violations


def _low_day_targets(norm: Normalised) -> list[str]:
    """Power or heart-rate targets (not allowed on rest and de-load days)."""
    violations: list[str] = []
    watts = _WATTS.search(norm.folded)
    if watts:
        violations.append(f"power_target_on_low_day:{watts.group(0)}")
    bpm = [int(m.group(1)) for m in _BPM.finditer(norm.folded)]
    if bpm and max(bpm) > LOW_DAY_MAX_BPM:
        violations.append(f"hr_target_on_low_day:{max(bpm)}bpm>{LOW_DAY_MAX_BPM}")
    return violations


def _disagreements(named: _Named, s: StructuredBrief) -> list[str]:
    """The text against the reply's own declared fields."""
    violations: list[str] = []
    said = max([*named.zones, *named.rpes, *(pct_zone(p) for p in named.pcts),
                *(t.level for t in named.terms if t.level < _RACE_LEVEL)], default=1)
    if said > s.max_zone:
        violations.append(f"text_disagrees:zone Z{said}>declared Z{s.max_zone}")
    if named.tss and max(named.tss) > s.tss:
        violations.append(f"text_disagrees:tss {max(named.tss)}>declared {s.tss}")
    intervals = named.intervals
    if intervals and not s.intervals:
        violations.append(f"text_disagrees:intervals ({intervals[0].term})")
    races = [t for t in named.terms if t.level >= _RACE_LEVEL]
    if races and not s.race:
        violations.append(f"text_disagrees:race ({races[0].term})")
    return violations


def check_fields(brief: StructuredBrief, decision: Decision) -> list[str]:
    """The structured fields against the decision."""
    out: list[str] = []
    if brief.tss > decision.tss_high:
        out.append(f"declared_tss_over_cap:{brief.tss}>{decision.tss_high}")
    if brief.max_zone > decision.max_zone:
        out.append(f"declared_zone_above_cap:Z{brief.max_zone}>Z{decision.max_zone}")
    session_zone = SESSION_ZONE[brief.session_type]
    if session_zone > decision.max_zone or brief.session_type not in (
        *allowed_session_types(decision), "rest", "recovery"
    ):
        out.append(f"declared_session_not_allowed:{brief.session_type}>Z{decision.max_zone}")
    if brief.intervals and not decision.intervals_allowed:
        out.append("declared_intervals_not_allowed")
    if brief.race:
        out.append("declared_race_not_allowed")
    return out


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


def parse_reply(raw: str) -> tuple[StructuredBrief | None, str | None]:
    """(brief, None) when the reply is one JSON object of the schema, else (None, why)."""
    body = raw.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None, "not_json"
    if not isinstance(data, dict):
        return None, "not_an_object"
    try:
        return StructuredBrief.model_validate(data), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "reply"
        return None, f"{where}:{first['type']}"


def check_reply(raw: str | None, decision: Decision) -> GuardrailResult:
    """Parse the model's structured reply and judge fields and text against the decision."""
    if raw is None or not raw.strip():
        return GuardrailResult(ok=False, violations=["empty"])
    brief, error = parse_reply(raw)
    if brief is None:
        return GuardrailResult(ok=False, violations=[f"unstructured:{error}"])
    fields = check_fields(brief, decision)
    verdict = check_brief(brief.text, decision, structured=brief)
    verdict.violations = _dedupe(fields + verdict.violations)
    verdict.ok = not verdict.violations
    verdict.brief = brief
    return verdict
