"""Physiological simulator: synthetic athletes whose ground truth is known.

Why it exists: model quality can only be judged honestly against the best any model
could do. The simulator generates canonical daily rows (see `veloready_pipeline.schema`)
from hidden per-athlete parameters and a hidden day-by-day state, and it computes that
best achievable error (the *noise floor*) from its own truth, by re-drawing the random
part of every next morning many times from the same end-of-day state.

What it models, per athlete (all hidden, returned in `SimulationResult.athletes`):

* a training plan: weekly template with rest days, 4-week build/recovery blocks, some
  very hard weeks (training camps) that push ACWR above 1.5, an occasional holiday break,
  FTP tests every 2-6 weeks (each athlete's own habit), and the time the athlete has
  each day;
* what was actually ridden: the plan with deviations, skipped days, illness, injury
  lay-offs and autoregulation on bad mornings; CTL/ATL/TSB with the recursion of
  `veloready_pipeline.training_load`;
* morning physiology: HRV (log-normal, a fast AR(1) part, a slow drift, responses to
  relative fatigue, yesterday's TSS, alcohol, illness and sleep, measurement noise),
  resting HR, sleep hours and score, illness episodes, alcohol evenings;
* a recovery score 0-100 from a hidden non-linear function of that morning's state
  plus noise;
* a latent FTP and W' that follow fitness (CTL) and detraining; ride best efforts at
  1 s ... 60 min from a power-duration curve, usually sub-maximal; FTP test labels;
* injury events whose hazard follows the athlete's strain, a ~1-week memory of the
  design's warning signs (a load spike raises the risk over the following week), with
  a raised risk after a return, a refractory period and a lay-off after each event;
* missing data: wearable-off streaks (row kept, sensor values NaN), a few whole days
  absent, and sporadic single-sensor gaps.

Two profiles: ``realistic`` is calibrated to what wearable exports show (recovery is
mostly that morning's HRV against its baseline, so tomorrow is hard to predict);
``easy`` is a low-noise world where tomorrow's recovery follows from today's state and
load, used to exercise the shipping path. ``mixed`` is a cohort of both: a fixed share
(`MIXED_EASY_SHARE`) of the athletes, picked from the run's seed, is drawn with the
easy profile's parameters (well-measured), the rest with the realistic ones; each
athlete's profile is recorded in the truth (``truth/athlete_params.parquet``, column
``profile``), never in the canonical rows a model reads.

Everything is vectorised over athletes (one NumPy step per simulated day) and
deterministic per seed.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from veloready_pipeline.features_nets import INJURY_HORIZON
from veloready_pipeline.fsio import atomic_write_with
from veloready_pipeline.schema import COLUMNS_BY_NAME, POWER_COLUMNS, POWER_DURATIONS_S
from veloready_pipeline.training_load import ATL_DAYS, CTL_DAYS

Profile = Literal["realistic", "easy", "mixed"]
PROFILES: tuple[str, ...] = ("realistic", "easy", "mixed")
# Share of a ``mixed`` cohort drawn with the easy profile (rounded to whole athletes).
MIXED_EASY_SHARE = 0.4

# Re-draws of the next morning per athlete-day used to estimate E[recovery_{t+1} | day t].
NOISE_FLOOR_DRAWS = 32

# Day types of the training plan.
REST, RECOVERY, ENDURANCE, TEMPO, THRESHOLD, VO2, LONG, TEST = range(8)
_TYPE_IF = np.array([0.0, 0.55, 0.68, 0.83, 0.88, 0.85, 0.70, 0.82])
_TYPE_WEIGHT = np.array([0.0, 0.45, 1.0, 1.15, 1.2, 1.1, 2.0, 0.9])
_TYPE_TEXT = (
    "Rest day",
    "Recovery spin {d} Z1",
    "Endurance {d} Z2",
    "Sweet spot 3x12 min, {d} total",
    "Threshold 2x20 min, {d} total",
    "VO2max 5x4 min, {d} total",
    "Long endurance {d} Z2",
    "FTP test (20 min all-out), {d} total",
)
# Weekly templates, Monday first.
_TEMPLATES = np.array(
    [
        [REST, THRESHOLD, ENDURANCE, VO2, REST, ENDURANCE, LONG],
        [REST, TEMPO, RECOVERY, VO2, ENDURANCE, LONG, ENDURANCE],
        [ENDURANCE, REST, THRESHOLD, ENDURANCE, REST, VO2, LONG],
        [REST, VO2, ENDURANCE, TEMPO, REST, LONG, LONG],
        [REST, TEMPO, ENDURANCE, THRESHOLD, RECOVERY, LONG, ENDURANCE],
    ]
)
_BLOCK = np.array([1.0, 1.1, 1.2, 0.65])  # 3 build weeks, 1 recovery week

# Mean share of the athlete's power-duration curve reached on a ride of each type, for
# the durations of POWER_DURATIONS_S (1 s ... 60 min). Riders rarely go all-out.
_EFFORT_MEAN = np.array(
    [
        [0.0] * 8,
        [0.40, 0.40, 0.40, 0.42, 0.45, 0.52, 0.55, 0.56],
        [0.58, 0.56, 0.55, 0.57, 0.60, 0.66, 0.70, 0.70],
        [0.60, 0.58, 0.58, 0.62, 0.68, 0.84, 0.91, 0.82],
        [0.62, 0.60, 0.60, 0.65, 0.72, 0.88, 0.95, 0.84],
        [0.68, 0.66, 0.66, 0.76, 0.88, 0.97, 0.84, 0.76],
        [0.70, 0.68, 0.67, 0.68, 0.70, 0.75, 0.77, 0.75],
        [0.70, 0.68, 0.68, 0.72, 0.78, 0.88, 0.99, 0.90],
    ]
)

SENSOR_COLUMNS: tuple[str, ...] = (
    "hrv_ms",
    "resting_hr",
    "sleep_score",
    "sleep_hours",
    "recovery_score",
    "illness_confidence",
    "alcohol",
)


@dataclass(frozen=True)
class _ProfileParams:
    """Knobs that differ between profiles (everything else is shared)."""

    # HRV (natural-log scale)
    hrv_fast_sd: float  # SD of the fast AR(1) component
    hrv_fast_phi: float
    hrv_meas_sd: float  # day-to-day measurement noise
    hrv_slow_sd: float  # slow drift of the athlete's HRV level
    hrv_slow_phi: float
    hrv_scale_sd: float  # between-athlete spread of the HRV variability (log-normal)
    hrv_fatigue: float  # log-HRV drop per unit of relative fatigue (ATL-CTL)/(CTL+15)
    hrv_acute: float  # log-HRV drop per 100 TSS the day before
    hrv_load_drive: float  # push of yesterday's TSS above habit on the fast AR state
    hrv_alcohol: float
    hrv_illness: float
    rhr_noise_sd: float
    # sleep
    sleep_ar_sd: float
    sleep_score_sd: float
    # recovery = 100 * sigmoid(gain * z + bias) + noise
    rec_gain: float
    rec_w_hrv: float  # HRV against its rolling baseline (what wearables score)
    rec_w_hrv_fixed: float  # HRV against the athlete's long-run baseline
    rec_w_rhr: float
    rec_w_sleep: float
    rec_w_acute: float  # direct effect of yesterday's TSS against the athlete's habit
    rec_curvature: float  # extra penalty when the HRV signal is suppressed
    rec_noise_sd: float
    baseline_days: float  # time constant of the wearable's rolling HRV/RHR baseline
    # behaviour and data quality
    tss_dev_sd: float
    skip_prob: float
    hard_week_prob: float
    illness_rate: float  # mean onsets per day
    alcohol_rate: float  # mean evenings per day (weekday)
    missing_rate: float  # mean wearable-off share of days
    drop_rate: float  # share of whole days absent
    sensor_gap_rate: float  # sporadic single-sensor gaps
    effort_sd: float  # per-duration spread of ride effort fractions
    ftp_test_sd: float  # relative FTP test measurement noise
    ftp_test_every_days: tuple[int, int]  # range of the athletes' mean test intervals


_PROFILE_PARAMS: dict[str, _ProfileParams] = {
    "realistic": _ProfileParams(
        hrv_fast_sd=0.16,
        hrv_fast_phi=0.25,
        hrv_meas_sd=0.05,
        hrv_slow_sd=0.2,
        hrv_slow_phi=0.99,
        hrv_scale_sd=0.3,
        hrv_fatigue=0.12,
        hrv_acute=0.035,
        hrv_load_drive=0.0,
        hrv_alcohol=0.15,
        hrv_illness=0.25,
        rhr_noise_sd=2.0,
        sleep_ar_sd=0.6,
        sleep_score_sd=6.0,
        rec_gain=0.85,
        rec_w_hrv=1.0,
        rec_w_hrv_fixed=0.0,
        rec_w_rhr=0.25,
        rec_w_sleep=0.15,
        rec_w_acute=0.05,
        rec_curvature=0.12,
        rec_noise_sd=6.0,
        baseline_days=10.0,
        tss_dev_sd=0.18,
        skip_prob=0.05,
        hard_week_prob=0.15,
        illness_rate=1 / 110,
        alcohol_rate=0.08,
        missing_rate=0.085,
        drop_rate=0.025,
        sensor_gap_rate=0.01,
        effort_sd=0.03,
        ftp_test_sd=0.012,
        ftp_test_every_days=(14, 42),
    ),
    "easy": _ProfileParams(
        hrv_fast_sd=0.08,
        hrv_fast_phi=0.7,
        hrv_meas_sd=0.02,
        hrv_slow_sd=0.0,
        hrv_slow_phi=0.98,
        hrv_scale_sd=0.15,
        hrv_fatigue=0.0,
        hrv_acute=0.10,
        hrv_load_drive=0.0,
        hrv_alcohol=0.03,
        hrv_illness=0.10,
        rhr_noise_sd=0.8,
        sleep_ar_sd=0.25,
        sleep_score_sd=2.0,
        rec_gain=0.9,
        rec_w_hrv=0.0,
        rec_w_hrv_fixed=0.12,
        rec_w_rhr=0.0,
        rec_w_sleep=0.05,
        rec_w_acute=1.5,
        rec_curvature=0.0,
        rec_noise_sd=3.3,
        baseline_days=14.0,
        tss_dev_sd=0.10,
        skip_prob=0.03,
        hard_week_prob=0.10,
        illness_rate=1 / 150,
        alcohol_rate=0.03,
        missing_rate=0.05,
        drop_rate=0.01,
        sensor_gap_rate=0.0,
        effort_sd=0.02,
        ftp_test_sd=0.008,
        ftp_test_every_days=(14, 42),
    ),
}

# Injury/overtraining hazard. Overuse injuries and overreaching are not a coin flipped
# against today's load: tissue damage and unresolved fatigue build up over days and
# heal over days, and the sports-medicine finding behind the ACWR rule is that a load
# spike raises the risk over the *following week* (Hulin et al. 2014/2016, Gabbett
# 2016), while the strongest single risk factor for an injury is a recent previous one
# (Hagglund et al. 2006). So each day's warning signs are a daily *insult* (log-hazard
# units); the hazard follows the athlete's *strain*, the insult averaged over the last
# ~`_INJURY_STRAIN_DAYS` days (exponential memory), plus a re-injury term after a return:
#   log h = log(_INJURY_BASE * susceptibility) + strain + re-injury, 0 while refractory.
# A one-day blip adds a seventh of its weight; a sign held for a week adds ~2/3 of it.
# Calibration (realistic profile, 50 athletes x 180 days): ~2.8 events per athlete;
# days with ACWR > 1.5 carry ~15x the event rate of the other days (as strong as the
# earlier memoryless hazard: what changed is *when* the risk comes), days with any sign
# ~10x; a rested athlete ~1 event in 500 days (crashes and bad luck that no warning
# sign foretells). Insult weights were scaled x3 from the memoryless version because the
# average over a week dilutes a short spike.
_INJURY_BASE = 0.002  # events per day with no strain (susceptibility 1)
_INJURY_WEIGHTS = {
    "acwr": 3.0,  # ACWR > 1.5
    "tsb": 3.0,  # TSB < -20 for more than 7 days
    "hrv": 1.5,  # HRV 7-day mean down > 10 % on the week before
    "rhr": 1.5,  # RHR 7-day mean up > 5 % on the week before
    "sleep": 2.1,  # sleep score < 70 for more than 3 days in a row
    "ramp": 1.5,  # CTL up > 5 TSS/day in a week
}
# ... plus graded terms, so risk climbs before a sign trips and ranking is learnable.
_INJURY_ACWR_SLOPE = 6.0  # daily insult per unit of ACWR above 1.1 (capped at 2.6)
_INJURY_TSB_SLOPE = 0.09  # daily insult per TSB point below -10 (capped at -50)
_INJURY_STRAIN_DAYS = 7.0  # time constant of the strain (the insult's memory)
_INJURY_REINJURY = 1.0  # extra log-hazard on return from an injury (x2.7) ...
_INJURY_REINJURY_DAYS = 30.0  # ... fading with this time constant after the refractory
_INJURY_REFRACTORY_DAYS = 21
_INJURY_LAYOFF_DAYS = (5, 15)


@dataclass
class SimulationResult:
    """Synthetic canonical rows plus the truth needed to judge models on them.

    Attributes:
        frame: canonical rows (columns from `veloready_pipeline.schema`).
        athletes: one row per athlete with its hidden parameters.
        noise_floor: best errors any model could reach. ``recovery_rmse`` is the RMSE
            of next-day recovery around its conditional expectation given the full
            hidden end-of-day state (pooled; ``recovery_rmse_median_athlete`` per
            athlete), next to ``recovery_sd`` and ``recovery_r2_ceiling_median_athlete``;
            ``ftp_rmse_w`` is the FTP test noise against latent FTP;
            ``injury_auroc_oracle`` (``_at_risk``: outside refractory periods) is the
            AUROC of the true daily hazard for a same-day event;
            ``injury_auroc_oracle_horizon`` the AUROC of the simulator's own forecast
            from the hidden state for the injury family's label (an onset within
            `features_nets.INJURY_HORIZON` days);
            ``injury_events_per_athlete``.
        profile: ``realistic``, ``easy`` or ``mixed`` (each athlete's own profile is
            the ``profile`` column of ``athletes``).
        seed: the seed the run was drawn from.
        latent: hidden daily truth per athlete-day (latent FTP, W', CTL/ATL/TSB/ACWR,
            injury hazard and warning signs, illness, expected next-day recovery), for
            diagnostics; never a model input.
    """

    frame: pd.DataFrame
    athletes: pd.DataFrame
    noise_floor: dict[str, float]
    profile: str
    seed: int
    latent: pd.DataFrame = field(default_factory=pd.DataFrame)


# --------------------------------------------------------------------------- athletes


def _athlete_ids(n: int) -> list[str]:
    width = max(4, len(str(n)))
    return [f"sim-{i + 1:0{width}d}" for i in range(n)]


def _draw_athletes(n: int, prof: _ProfileParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Hidden per-athlete parameters (arrays of length ``n``)."""
    chronic = np.clip(rng.lognormal(np.log(55), 0.3, n), 25, 120)  # habitual TSS/day
    ftp = np.clip(rng.normal(200 + 0.9 * chronic, 30), 140, 420)
    w_prime = np.clip(rng.normal(20000, 4000, n), 9000, 35000)
    pmax = ftp * rng.uniform(3.2, 5.0, n)
    p = {
        "chronic_tss": chronic,
        "baseline_hrv": np.clip(rng.lognormal(np.log(65), 0.35, n), 18, 180),
        "baseline_rhr": np.clip(rng.normal(52, 6, n), 36, 72),
        "hrv_scale": np.exp(rng.normal(0, prof.hrv_scale_sd, n)),
        "load_sensitivity": np.clip(rng.lognormal(0, 0.35, n), 0.3, 3.0),
        "sleep_habit_h": np.clip(rng.normal(7.2, 0.45, n), 5.8, 8.8),
        "sleep_quality": np.clip(rng.normal(78, 5, n), 62, 92),
        "alcohol_rate": prof.alcohol_rate * rng.gamma(2.0, 0.5, n),
        "illness_rate": prof.illness_rate * rng.gamma(3.0, 1 / 3, n),
        "injury_susceptibility": rng.lognormal(-0.045, 0.3, n),
        "autoregulation": rng.uniform(0.2, 0.8, n),
        "ftp0": ftp,
        "ftp_ctl_gain": rng.uniform(0.18, 0.32, n),
        "w_prime": w_prime,
        "pmax": pmax,
        "long_decay": rng.uniform(0.035, 0.055, n),  # FTP = 94-96 % of 20-min power
        "missing_rate": np.clip(prof.missing_rate * rng.gamma(4.0, 0.25, n), 0.0, 0.3),
        "template": rng.integers(0, len(_TEMPLATES), n).astype(float),
        "weekday_minutes": np.clip(rng.normal(80, 20, n), 45, 150),
        "weekend_minutes": np.clip(rng.normal(200, 45, n), 100, 330),
    }
    # Training load the athlete starts with (history before the first simulated day).
    p["ctl0"] = chronic * rng.uniform(0.8, 1.05, n)
    p["atl0"] = p["ctl0"] * rng.uniform(0.85, 1.15, n)
    return p


# ------------------------------------------------------------------------------- plan


def _fmt_duration(minutes: np.ndarray) -> np.ndarray:
    m = np.round(minutes / 5) * 5
    h = (m // 60).astype(int)
    mm = (m % 60).astype(int)
    return np.array([f"{a}h{b:02d}" if a else f"{b} min" for a, b in zip(h, mm, strict=True)])


def _draw_plan(
    p: dict[str, np.ndarray], days: int, dow: np.ndarray, prof: _ProfileParams,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The athletes' plans: day types, planned TSS and time available, shape (A, T)."""
    n = len(p["chronic_tss"])
    t_idx = np.arange(days)
    dtype = _TEMPLATES[p["template"].astype(int)][:, dow]  # (A, T)

    # 4-week blocks with a random phase, very hard weeks (camps), one possible break.
    week = (t_idx[None, :] + rng.integers(0, 7, (n, 1))) // 7
    phase = rng.integers(0, 4, (n, 1))
    n_weeks = int(week.max()) + 1
    block = _BLOCK[(week + phase) % 4]
    hard = rng.random((n, n_weeks)) < prof.hard_week_prob
    # A camp sometimes runs over two weeks: that is what drives TSB below -20 for long.
    hard[:, 1:] |= hard[:, :-1] & (rng.random((n, n_weeks - 1)) < 0.4)
    hard_mult = np.where(hard, rng.uniform(1.8, 2.6, (n, n_weeks)), 1.0)
    mult = block * np.take_along_axis(hard_mult, week, axis=1)
    mult = np.where(block < 1, block, mult)  # recovery weeks stay easy

    has_break = rng.random(n) < 0.35
    b_start = rng.integers(0, max(days - 14, 1), n)
    b_len = rng.integers(5, 13, n)
    in_break = has_break[:, None] & (t_idx >= b_start[:, None]) & (
        t_idx < (b_start + b_len)[:, None]
    )
    dtype = np.where(in_break, REST, dtype)

    # FTP tests on a day that was going to be a ride, at each athlete's own habit: a
    # mean interval drawn once per athlete from `ftp_test_every_days`, +-3 days.
    # Why a spread, not everyone at 4-6 weeks: riders of indoor-training apps do a short
    # ramp test every 2-3 weeks (it replaces a workout and costs little), others do a
    # classic 20-min test every 5-6 weeks. Nobody here tests more often than every ~2
    # weeks: FTP moves ~1 % a month, about a test's own noise, so a weekly test would
    # mostly measure noise and cost a hard day each time. A planned test that is not
    # ridden as planned (ill, injured, skipped) leaves no FTP value and is not moved.
    # The habit also sets how many measured FTP labels a rider has: the zone gate
    # scores measured tests only (`features_nets`).
    lo, hi = prof.ftp_test_every_days
    habit = rng.integers(lo, hi + 1, (n, 1))
    gaps = np.maximum(habit + rng.integers(-3, 4, (n, days // max(lo - 3, 1) + 2)), 7)
    first = np.minimum(rng.integers(3, 31, (n, 1)), habit)
    test_days = np.cumsum(np.concatenate([first, gaps[:, 1:]], axis=1), axis=1)
    for k in range(test_days.shape[1]):
        d = test_days[:, k]
        ok = (d < days) & ~in_break[np.arange(n), np.minimum(d, days - 1)]
        dtype[np.arange(n)[ok], d[ok]] = TEST

    weekend = np.isin(dow, (5, 6))[None, :]
    base_min = np.where(weekend, p["weekend_minutes"][:, None], p["weekday_minutes"][:, None])
    minutes = base_min * np.exp(rng.normal(0, 0.15, (n, days)))
    crunched = rng.random((n, days)) < 0.1
    minutes = np.where(crunched, rng.uniform(30, 50, (n, days)), minutes)
    minutes = minutes * np.maximum(mult, 1.0)  # camps come with more time
    minutes = np.clip(np.round(minutes / 5) * 5, 20, 600)

    # Scale so an average week at block multiplier 1 is the habitual load once skipped
    # sessions, illness and bad mornings are taken off (riders complete ~85 %).
    week_weight = _TYPE_WEIGHT[_TEMPLATES].sum(axis=1)[p["template"].astype(int)]
    per_unit = 7 * p["chronic_tss"] / week_weight / 0.85
    wanted = _TYPE_WEIGHT[dtype] * per_unit[:, None] * mult
    intensity = _TYPE_IF[dtype]
    cap = minutes / 60 * intensity**2 * 100
    # An FTP test is warm-up + 20 min all-out + cool-down, whatever the athlete's load.
    wanted = np.where(dtype == TEST, np.maximum(wanted, 65.0), wanted)
    planned = np.round(np.minimum(wanted, cap), 0)
    planned = np.where(dtype == REST, 0.0, planned)
    return {"type": dtype, "planned": planned, "minutes": minutes, "in_break": in_break}


def _workout_text(dtype: np.ndarray, planned: np.ndarray) -> np.ndarray:
    """Free text of each planned workout, e.g. 'Endurance 1h30 Z2'."""
    intensity = np.where(_TYPE_IF[dtype] > 0, _TYPE_IF[dtype], 1.0)
    five_min = np.round(planned / (intensity**2 * 100) * 12).astype(int)  # 5-min steps
    key = dtype.astype(int) * 100_000 + five_min
    uniq, inverse = np.unique(key.ravel(), return_inverse=True)
    texts = np.empty(len(uniq), dtype=object)
    durs = _fmt_duration((uniq % 100_000) * 5.0)
    for i, (k, d) in enumerate(zip(uniq // 100_000, durs, strict=True)):
        texts[i] = _TYPE_TEXT[int(k)].format(d=d)
    return texts[inverse].reshape(dtype.shape)


# --------------------------------------------------------------------------- morning


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_morning(
    st: dict[str, np.ndarray],
    p: dict[str, np.ndarray],
    prof: _ProfileParams,
    rng: np.random.Generator,
    size: tuple[int, ...],
    weekend: bool,
) -> dict[str, np.ndarray]:
    """One morning drawn from the end-of-yesterday state ``st``.

    The same function produces the simulated morning and, with ``size=(K, A)``, the K
    re-draws used for the noise floor, so the floor measures exactly the randomness the
    data contain and nothing else.
    """
    # All random numbers of the morning in two calls (this runs K times per day).
    u = rng.random((4, *size))
    eps = rng.standard_normal((7, *size))

    # Illness: an episode continues, ends, or starts (more likely when overreached).
    fatigue = st["fatigue"]
    onset_p = p["illness_rate"] * (1 + 1.5 * np.clip(fatigue, 0, 2))
    new_ill = u[0] < onset_p
    still = st["ill_left"] > 1
    ill = np.where(st["ill_left"] > 0, still, new_ill)
    ill_left = np.where(st["ill_left"] > 0, st["ill_left"] - 1, 0)
    new_len = 3 + np.floor(6 * u[1]).astype(int)  # 3-8 days
    ill_left = np.where(~(st["ill_left"] > 0) & new_ill, new_len, ill_left)
    sev_new = 0.4 + 0.6 * u[2]
    severity = np.where(ill, np.where(st["ill_left"] > 0, st["ill_sev"], sev_new), 0.0)

    alcohol = u[3] < p["alcohol_rate"] * (2.2 if weekend else 0.7)

    # Sleep of the night before this morning.
    phi_s = 0.4
    sleep_ar = phi_s * st["sleep_ar"] + np.sqrt(1 - phi_s**2) * prof.sleep_ar_sd * eps[0]
    hours = (
        p["sleep_habit_h"] + (0.45 if weekend else 0.0) + sleep_ar - 0.35 * alcohol
        + 0.3 * severity
    )
    hours = np.clip(hours, 3.0, 11.5)
    score = (
        p["sleep_quality"] + 8.0 * (hours - p["sleep_habit_h"]) - 7.0 * alcohol
        - 8.0 * severity + prof.sleep_score_sd * eps[1]
    )
    score = np.clip(score, 15.0, 100.0)
    sleep_z = (score - p["sleep_quality"]) / 10.0

    # HRV on a log scale.
    scale = p["hrv_scale"]
    phi_f = prof.hrv_fast_phi
    sens = p["load_sensitivity"]
    fast = (
        phi_f * st["hrv_fast"] + np.sqrt(1 - phi_f**2) * prof.hrv_fast_sd * scale * eps[2]
        - prof.hrv_load_drive * sens * (st["tss_prev"] - p["chronic_tss"]) / 100
    )
    phi_w = prof.hrv_slow_phi
    slow = phi_w * st["hrv_slow"] + np.sqrt(1 - phi_w**2) * prof.hrv_slow_sd * eps[3]
    ln_true = (
        np.log(p["baseline_hrv"]) + slow + fast
        - prof.hrv_fatigue * sens * np.clip(fatigue, -0.6, 2.0)
        - prof.hrv_acute * sens * st["tss_prev"] / 100
        - prof.hrv_alcohol * alcohol - prof.hrv_illness * severity
        + 0.03 * np.clip(sleep_z, -3, 2)
    )
    ln_hrv = ln_true + prof.hrv_meas_sd * scale * eps[4]
    hrv = np.exp(ln_hrv)

    rhr = (
        p["baseline_rhr"] * (1 + 0.05 * sens * np.clip(fatigue, -0.6, 2.0)
                             + 0.02 * sens * st["tss_prev"] / 100)
        - 1.5 * fast / (max(prof.hrv_fast_sd, 1e-9) * scale)
        + 3.0 * alcohol + 6.0 * severity + prof.rhr_noise_sd * eps[5]
    )

    # Hidden recovery function: HRV against its rolling baseline dominates in the
    # realistic world (RHR, sleep and yesterday's load add to it, and a suppressed HRV
    # costs more than a high one gains); in the easy world yesterday's load against
    # the athlete's habit and the HRV state drive it.
    hrv_sd_ath = np.sqrt((prof.hrv_fast_sd**2 + prof.hrv_meas_sd**2) * scale**2
                         + prof.hrv_slow_sd**2 + 0.01)
    z_roll = (ln_hrv - st["hrv_base"]) / hrv_sd_ath
    z_fixed = (ln_true - np.log(p["baseline_hrv"])) / hrv_sd_ath
    z_rhr = -(rhr - st["rhr_base"]) / (0.06 * p["baseline_rhr"])
    z = (
        prof.rec_w_hrv * z_roll + prof.rec_w_hrv_fixed * z_fixed + prof.rec_w_rhr * z_rhr
        + prof.rec_w_sleep * np.clip(sleep_z, -3, 2)
        - prof.rec_w_acute * (st["tss_prev"] - p["chronic_tss"]) / 100
    )
    z = z - prof.rec_curvature * np.minimum(z, 0.0) ** 2
    rec = 100 * _sigmoid(prof.rec_gain * z + 0.35) + prof.rec_noise_sd * eps[6]
    rec = np.clip(np.round(rec), 0.0, 100.0) + 0.0  # + 0.0 turns -0.0 into 0.0
    return {
        "ill": ill,
        "ill_left": ill_left,
        "ill_sev": severity,
        "alcohol": alcohol,
        "sleep_ar": sleep_ar,
        "sleep_hours": hours,
        "sleep_score": score,
        "hrv_fast": fast,
        "hrv_slow": slow,
        "ln_hrv": ln_hrv,
        "hrv": hrv,
        "rhr": rhr,
        "recovery": rec,
    }


# --------------------------------------------------------------------------- helpers


def _window_mean(x: np.ndarray, t: int, window: int) -> np.ndarray:
    """Mean of the ``window`` days ending on day ``t`` (inclusive); x has no NaN."""
    lo = max(0, t - window + 1)
    return x[:, lo : t + 1].mean(axis=1)


def _auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Rank-based AUROC (ties get half credit); NaN if one class is absent."""
    label = label.astype(bool)
    n_pos, n_neg = int(label.sum()), int((~label).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _curve_shape(
    ftp: np.ndarray, w_prime: np.ndarray, pmax: np.ndarray, decay: np.ndarray
) -> np.ndarray:
    """Power-duration curve (W) at POWER_DURATIONS_S for latent FTP ``ftp``.

    Morton's 3-parameter critical-power model up to 20 min (a sprint ceiling ``pmax``,
    a finite work capacity W' above CP) and a logarithmic fade beyond, with CP chosen
    so that the 60-min power equals FTP. Shapes broadcast; the last axis is duration.
    """
    d = np.asarray(POWER_DURATIONS_S, dtype=float)
    ftp_, wp, pm, k = (a[..., None] for a in (ftp, w_prime, pmax, decay))
    tau = wp / np.maximum(pm - ftp_, 50.0)
    cp = ftp_ / (1 - k * np.log(3.0)) - wp / (1200 + tau)
    short = cp + wp / (np.minimum(d, 1200) + tau)
    fade = np.where(d > 1200, 1 - k * np.log(np.maximum(d, 1200) / 1200), 1.0)
    return short * fade


# ------------------------------------------------------------------------ simulation


def simulate_athletes(
    n_athletes: int,
    days: int,
    seed: int,
    profile: Profile = "realistic",
    start_date: str = "2026-01-01",
) -> SimulationResult:
    """Simulate ``n_athletes`` athletes for ``days`` days.

    Args:
        n_athletes: number of athletes (ids ``sim-0001`` ...).
        days: days per athlete, starting at ``start_date``.
        seed: the run's seed; the same seed gives an identical result.
        profile: ``realistic`` (wearable-like noise), ``easy`` (low noise) or
            ``mixed`` (`MIXED_EASY_SHARE` of the athletes easy, the rest realistic).
        start_date: first simulated day (ISO date).

    Returns:
        The canonical rows, the hidden athlete parameters, the noise floor and the
        hidden daily truth.

    Raises:
        ValueError: for an unknown profile, fewer than 1 athlete or fewer than 14 days.
    """
    if profile not in PROFILES:
        raise ValueError(f"simulate: profile must be one of {PROFILES}, got {profile!r}")
    if n_athletes < 1:
        raise ValueError(f"simulate: n_athletes must be >= 1, got {n_athletes}")
    if days < 14:
        raise ValueError(f"simulate: days must be >= 14, got {days}")
    dates = pd.date_range(pd.Timestamp(start_date).normalize(), periods=days, freq="D")
    dow = dates.day_of_week.to_numpy()
    root = np.random.SeedSequence(seed)
    if profile == "mixed":
        profiles = mixed_profiles(n_athletes, seed)
        # One independent stream family per group (the 8th child of the run's seed; the
        # first 7 are the single-profile streams), each group simulated as a cohort of
        # its own, then the athletes are put back in their drawn order.
        group_seeds = dict(zip(("easy", "realistic"), root.spawn(8)[7].spawn(2), strict=True))
        parts = {}
        for name in ("easy", "realistic"):
            idx = np.flatnonzero(profiles == name)
            if len(idx):
                parts[name] = (idx, _simulate_group(len(idx), days, dow,
                                                    _PROFILE_PARAMS[name], group_seeds[name]))
        p, plan, sim, power, obs = (
            _merge_groups([(idx, arrays[k]) for idx, arrays in parts.values()], n_athletes)
            for k in range(5)
        )
    else:
        profiles = np.full(n_athletes, profile, dtype=object)
        p, plan, sim, power, obs = _simulate_group(n_athletes, days, dow,
                                                   _PROFILE_PARAMS[profile], root)
    ids = np.array(_athlete_ids(n_athletes), dtype=object)
    frame = _build_frame(obs, plan, ids, dates)
    noise_floor, per_athlete = _compute_noise_floor(sim, obs)
    if profile == "mixed":
        for name in ("easy", "realistic"):
            sel = per_athlete[profiles == name]
            noise_floor[f"recovery_rmse_median_athlete_{name}"] = _median(sel)

    athletes = pd.DataFrame({"athlete_id": pd.array(ids, dtype="string"), **p})
    athletes["template"] = athletes["template"].astype(int)
    athletes["profile"] = pd.array(profiles.astype(str), dtype="string")
    athletes["injury_events"] = sim["injury"].sum(axis=1)
    athletes["recovery_noise_floor"] = per_athlete
    return SimulationResult(frame=frame, athletes=athletes, noise_floor=noise_floor,
                            profile=profile, seed=seed,
                            latent=_latent_frame(sim, obs["keep"], ids, dates))


def mixed_profiles(n_athletes: int, seed: int) -> np.ndarray:
    """Each athlete's profile in a ``mixed`` cohort: ``round(MIXED_EASY_SHARE * n)``
    athletes (at least 1, at most n - 1 when n >= 2), picked from the run's seed, are
    ``easy``, the rest ``realistic``."""
    k = int(round(MIXED_EASY_SHARE * n_athletes))
    if n_athletes >= 2:
        k = min(max(k, 1), n_athletes - 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(9)[8])
    out = np.full(n_athletes, "realistic", dtype=object)
    out[rng.permutation(n_athletes)[:k]] = "easy"
    return out


def _simulate_group(
    n: int, days: int, dow: np.ndarray, prof: _ProfileParams, seed_seq: np.random.SeedSequence,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray],
           np.ndarray, dict[str, np.ndarray]]:
    """One cohort under one profile: (params, plan, truth, power, observations)."""
    # Independent streams per concern: changing one part never reshuffles the others.
    rng_ath, rng_plan, rng_day, rng_nf, rng_pow, rng_miss, rng_obs = (
        np.random.default_rng(s) for s in seed_seq.spawn(7)
    )
    p = _draw_athletes(n, prof, rng_ath)
    plan = _draw_plan(p, days, dow, prof, rng_plan)
    sim = _run_days(p, plan, prof, dow, rng_day, rng_nf, rng_ath)
    power = _simulate_power(p, plan, sim, prof, rng_pow)
    obs = _observe(p, plan, sim, power, prof, rng_obs, rng_miss, rng_pow)
    return p, plan, sim, power, obs


def _merge_groups(parts, n: int):  # type: ignore[no-untyped-def]
    """Put groups back in athlete order: ``parts`` is [(athlete positions, arrays)], the
    arrays a dict of per-athlete-first arrays or one such array."""
    first = parts[0][1]
    if isinstance(first, dict):
        return {k: _merge_groups([(idx, d[k]) for idx, d in parts], n) for k in first}
    dtype = np.result_type(*(a.dtype for _, a in parts))
    out = np.empty((n, *first.shape[1:]), dtype=dtype)
    for idx, a in parts:
        out[idx] = a
    return out


def _ridden(planned: np.ndarray, m: dict[str, np.ndarray], p: dict[str, np.ndarray],
            prof: _ProfileParams, rng: np.random.Generator,
            layoff_left: np.ndarray) -> np.ndarray:
    """What was actually ridden (TSS): the plan, bent by life (draws from ``rng``)."""
    n = len(planned)
    ride = planned * np.exp(rng.normal(0, prof.tss_dev_sd, n))
    ride = np.where(rng.random(n) < prof.skip_prob, 0.0, ride)
    ride = np.where(m["ill"], ride * np.where(rng.random(n) < 0.75, 0.0, 0.4), ride)
    bad_morning = (m["recovery"] < 33) & (rng.random(n) < p["autoregulation"])
    ride = np.where(bad_morning, ride * 0.5, ride)
    ride = np.where(layoff_left > 0, ride * 0.25, ride)
    extra = (planned == 0) & (rng.random(n) < 0.04) & ~m["ill"]
    ride = np.where(extra, rng.uniform(25, 60, n), ride)
    return np.round(np.clip(ride, 0, 600), 1)


def _run_days(
    p: dict[str, np.ndarray], plan: dict[str, np.ndarray], prof: _ProfileParams,
    dow: np.ndarray, rng: np.random.Generator, rng_nf: np.random.Generator,
    rng_init: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Step every athlete through the days together; returns (A, T) arrays of truth.

    Each day: the morning (illness, alcohol, sleep, HRV, RHR, recovery), then what was
    ridden, the load update, latent FTP, the warning signs and the injury draw, then
    the end-of-day state - from which the next morning is also re-drawn K times with a
    separate stream to estimate E[recovery tomorrow | today] for the noise floor.
    """
    n, T = plan["planned"].shape
    keys = ("hrv", "rhr", "sleep_score", "sleep_hours", "recovery", "alcohol", "ill",
            "ill_sev", "tss", "ctl", "atl", "tsb", "ftp", "w_prime", "hazard", "injury", "strain",
            "risk_ahead")
    out = {k: np.zeros((n, T)) for k in keys}
    out.update({f"sign_{k}": np.zeros((n, T), dtype=bool) for k in _INJURY_WEIGHTS})
    out["expected_next"] = np.full((n, T), np.nan)
    out["var_next"] = np.full((n, T), np.nan)

    ctl, atl, ftp = p["ctl0"].copy(), p["atl0"].copy(), p["ftp0"].copy()
    st: dict[str, np.ndarray] = {
        "fatigue": (atl - ctl) / (ctl + 15),
        "tsb": ctl - atl,
        "tss_prev": p["chronic_tss"].copy(),
        "ill_left": np.zeros(n, dtype=int),
        "ill_sev": np.zeros(n),
        "sleep_ar": np.zeros(n),
        "hrv_fast": prof.hrv_fast_sd * p["hrv_scale"] * rng_init.standard_normal(n),
        "hrv_slow": prof.hrv_slow_sd * np.asarray(rng_init.standard_normal(n)),
        "hrv_base": np.log(p["baseline_hrv"]),
        "rhr_base": p["baseline_rhr"].copy(),
    }
    tsb_streak, sleep_streak = np.zeros(n), np.zeros(n)
    since_injury, layoff_left = np.full(n, 10_000.0), np.zeros(n)
    strain = np.zeros(n)  # the injury insult's exponential memory (log-hazard units)
    alpha_ctl, alpha_atl = 1.0 / CTL_DAYS, 1.0 / ATL_DAYS
    alpha_base = 1.0 / prof.baseline_days

    for t in range(T):
        m = _draw_morning(st, p, prof, rng, (n,), bool(dow[t] in (5, 6)))
        for k in ("hrv", "rhr", "sleep_score", "sleep_hours", "recovery", "alcohol", "ill",
                  "ill_sev"):
            out[k][:, t] = m[k]
        out["tsb"][:, t] = st["tsb"]

        ride = _ridden(plan["planned"][:, t], m, p, prof, rng, layoff_left)
        out["tss"][:, t] = ride

        # Load, with the recursion of veloready_pipeline.training_load.ewma_load.
        ctl = ctl + alpha_ctl * (ride - ctl)
        atl = atl + alpha_atl * (ride - atl)
        out["ctl"][:, t], out["atl"][:, t] = ctl, atl

        # Latent FTP and W' drift towards what the current fitness supports.
        target = p["ftp0"] * (1 + p["ftp_ctl_gain"] * (ctl - p["ctl0"]) / p["ctl0"])
        target = np.clip(target, 0.75 * p["ftp0"], 1.3 * p["ftp0"])
        ftp = ftp + (target - ftp) / 10.0 + 0.001 * ftp * rng.standard_normal(n)
        out["ftp"][:, t] = ftp
        out["w_prime"][:, t] = p["w_prime"] * (1 + 0.5 * (ftp / p["ftp0"] - 1))

        # Warning signs at the end of the day, then the injury hazard.
        acwr = atl / np.maximum(ctl, 1e-6)
        tsb_streak = np.where(st["tsb"] < -20, tsb_streak + 1, 0)
        sleep_streak = np.where(m["sleep_score"] < 70, sleep_streak + 1, 0)
        signs = {
            "acwr": acwr > 1.5,
            "tsb": tsb_streak > 7,
            "ramp": (ctl - (out["ctl"][:, t - 7] if t >= 7 else p["ctl0"])) > 5,
            "sleep": sleep_streak > 3,
            "hrv": np.zeros(n, dtype=bool),
            "rhr": np.zeros(n, dtype=bool),
        }
        if t >= 13:
            signs["hrv"] = _window_mean(out["hrv"], t, 7) < 0.9 * _window_mean(out["hrv"],
                                                                             t - 7, 7)
            signs["rhr"] = _window_mean(out["rhr"], t, 7) > 1.05 * _window_mean(out["rhr"],
                                                                              t - 7, 7)
        insult = np.zeros(n)
        for k, w in _INJURY_WEIGHTS.items():
            insult = insult + w * signs[k]
            out[f"sign_{k}"][:, t] = signs[k]
        insult = insult + _INJURY_ACWR_SLOPE * np.clip(acwr - 1.1, 0, 1.5)
        insult = insult + _INJURY_TSB_SLOPE * np.clip(-10 - st["tsb"], 0, 40)
        strain = strain + (insult - strain) / _INJURY_STRAIN_DAYS
        returned = np.maximum(since_injury - _INJURY_REFRACTORY_DAYS, 0.0)
        reinjury = _INJURY_REINJURY * np.exp(-returned / _INJURY_REINJURY_DAYS)
        log_h = np.log(_INJURY_BASE * p["injury_susceptibility"]) + strain + reinjury
        out["strain"][:, t] = strain
        hazard = np.where(since_injury > _INJURY_REFRACTORY_DAYS, np.exp(log_h), 0.0)
        event = rng.random(n) < hazard
        out["hazard"][:, t], out["injury"][:, t] = hazard, event
        since_injury = np.where(event, 0, since_injury + 1)
        out["risk_ahead"][:, t] = _injury_risk_ahead(strain, insult, since_injury,
                                                     p["injury_susceptibility"])
        layoff_left = np.where(
            event, rng.integers(*_INJURY_LAYOFF_DAYS, n), np.maximum(layoff_left - 1, 0)
        )

        # End-of-day state for tomorrow's morning.
        st = {
            "fatigue": (atl - ctl) / (ctl + 15),
            "tsb": ctl - atl,
            "tss_prev": ride,
            "ill_left": m["ill_left"],
            "ill_sev": m["ill_sev"],
            "sleep_ar": m["sleep_ar"],
            "hrv_fast": m["hrv_fast"],
            "hrv_slow": m["hrv_slow"],
            "hrv_base": st["hrv_base"] + alpha_base * (m["ln_hrv"] - st["hrv_base"]),
            "rhr_base": st["rhr_base"] + alpha_base * (m["rhr"] - st["rhr_base"]),
        }
        if t + 1 < T:
            draws = _draw_morning(st, p, prof, rng_nf, (NOISE_FLOOR_DRAWS, n),
                                  bool(dow[t + 1] in (5, 6)))["recovery"]
            out["expected_next"][:, t] = draws.mean(axis=0)
            out["var_next"][:, t] = draws.var(axis=0, ddof=1)
    return out


def _observe(
    p: dict[str, np.ndarray], plan: dict[str, np.ndarray], sim: dict[str, np.ndarray],
    power: np.ndarray, prof: _ProfileParams, rng_obs: np.random.Generator,
    rng_miss: np.random.Generator, rng_pow: np.random.Generator,
) -> dict[str, np.ndarray]:
    """What the devices and apps record: rounded values, labels and every kind of gap.

    Returns the canonical columns as (A, T) arrays plus ``keep`` (the day's row exists).
    """
    n, T = sim["tss"].shape
    ill = sim["ill"].astype(bool)
    ill_conf = np.where(
        ill,
        rng_obs.beta(6, 2.5, (n, T)),
        np.where(rng_obs.random((n, T)) < 0.12, rng_obs.beta(1.2, 9, (n, T)), 0.0),
    )
    off = _draw_wearable_off(p["missing_rate"], T, rng_miss)
    dropped = rng_miss.random((n, T)) < prof.drop_rate
    dropped[:, 0] = False
    gaps = {c: rng_miss.random((n, T)) < prof.sensor_gap_rate for c in SENSOR_COLUMNS}

    def observed(values: np.ndarray, col: str, decimals: int) -> np.ndarray:
        return np.where(off | gaps[col], np.nan, np.round(values, decimals))

    hrv = observed(sim["hrv"], "hrv_ms", 1)
    recovery = observed(sim["recovery"], "recovery_score", 0)
    recovery = np.where(np.isnan(hrv), np.nan, recovery)  # no HRV, no score
    test_ok = (plan["type"] == TEST) & (sim["tss"] > 0.5 * plan["planned"]) & (sim["tss"] >= 25)
    measured = np.round(sim["ftp"] * (1 + prof.ftp_test_sd * rng_pow.standard_normal((n, T))))
    obs: dict[str, np.ndarray] = {
        "hrv_ms": np.clip(hrv, 5, 250),
        "resting_hr": np.clip(observed(sim["rhr"], "resting_hr", 0), 25, 120),
        "sleep_score": observed(sim["sleep_score"], "sleep_score", 0),
        "sleep_hours": observed(sim["sleep_hours"], "sleep_hours", 2),
        "tss": sim["tss"],
        "planned_tss": plan["planned"],
        "recovery_score": recovery,
        "illness_confidence": observed(ill_conf, "illness_confidence", 2),
        "alcohol": observed(sim["alcohol"], "alcohol", 0),
        "time_available_min": plan["minutes"],
        **{c: power[:, :, j] for j, c in enumerate(POWER_COLUMNS)},
        # A test counts when done as planned and long enough to hold the 20-min effort.
        "ftp_test_w": np.where(test_ok, np.clip(measured, 50, 600), np.nan),
        "injury": sim["injury"],
    }
    obs["keep"] = ~dropped
    return obs


def _build_frame(
    obs: dict[str, np.ndarray], plan: dict[str, np.ndarray], ids: np.ndarray,
    dates: pd.DatetimeIndex,
) -> pd.DataFrame:
    """The canonical rows of the days that exist, in schema column order."""
    keep = obs["keep"].ravel()
    n, T = obs["keep"].shape
    data: dict[str, object] = {
        "athlete_id": pd.array(np.repeat(ids, T)[keep], dtype="string"),
        "date": np.tile(dates.to_numpy(), n)[keep],
    }
    workout = _workout_text(plan["type"], plan["planned"]).ravel()[keep]
    for name in COLUMNS_BY_NAME:
        if name == "planned_workout":
            data[name] = pd.array(workout, dtype="string")
        elif name in obs:
            data[name] = obs[name].ravel()[keep].astype("float64")
    frame = pd.DataFrame(data)
    frame["date"] = pd.to_datetime(frame["date"]).dt.normalize().astype("datetime64[ns]")
    return frame


def _compute_noise_floor(
    sim: dict[str, np.ndarray], obs: dict[str, np.ndarray]
) -> tuple[dict[str, float], np.ndarray]:
    """Best achievable errors, from the simulator's own truth.

    Recovery: RMSE of tomorrow's observed score around E[score | end-of-today state],
    over the pairs a model is scored on (today's row present with its score, tomorrow's
    score observed). The squared error against a K-draw Monte Carlo mean is inflated by
    that mean's variance (var / K); it is subtracted so the floor is unbiased.
    """
    recovery, keep = obs["recovery_score"], obs["keep"]
    n = recovery.shape[0]
    actual_next = np.full_like(recovery, np.nan)
    actual_next[:, :-1] = recovery[:, 1:]
    expected = sim["expected_next"]
    pair = keep & np.isfinite(recovery) & np.isfinite(actual_next) & np.isfinite(expected)
    sq = (actual_next - expected) ** 2 - sim["var_next"] / NOISE_FLOOR_DRAWS
    per_athlete, r2_athlete = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        if pair[i].sum() >= 3:
            mse = max(float(sq[i][pair[i]].mean()), 0.0)
            per_athlete[i] = np.sqrt(mse)
            r2_athlete[i] = 1 - mse / float(np.var(actual_next[i][pair[i]]))
    pooled = float(np.sqrt(max(sq[pair].mean(), 0.0))) if pair.any() else float("nan")
    tests = np.isfinite(obs["ftp_test_w"])
    ftp_rmse = (
        float(np.sqrt(np.mean((obs["ftp_test_w"][tests] - sim["ftp"][tests]) ** 2)))
        if tests.any() else float("nan")
    )
    hazard, injury = sim["hazard"], sim["injury"]
    at_risk = keep & (hazard > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rec_sd = _median(np.nanstd(recovery, axis=1))
    floor = {
        "recovery_rmse": pooled,
        "recovery_rmse_median_athlete": _median(per_athlete),
        "recovery_sd": rec_sd,
        "recovery_r2_ceiling_median_athlete": _median(r2_athlete),
        "ftp_rmse_w": ftp_rmse,
        "injury_auroc_oracle": _auroc(hazard[keep], injury[keep]),
        "injury_auroc_oracle_at_risk": _auroc(hazard[at_risk], injury[at_risk]),
        "injury_auroc_oracle_horizon": _injury_horizon_oracle(sim["risk_ahead"], injury,
                                                              keep),
        "injury_events_per_athlete": float(injury.sum() / n),
    }
    return floor, per_athlete


def _injury_risk_ahead(strain: np.ndarray, insult: np.ndarray, since: np.ndarray,
                       susceptibility: np.ndarray, horizon: int = INJURY_HORIZON
                       ) -> np.ndarray:
    """P(an injury starts on *t+1..t+horizon*) from the hidden end-of-day-*t* state.

    The simulator's own forecast for the injury family's label: the strain carried
    forward as if today's insult held for the next days (the loads still to come are
    unknown on day *t*), with the refractory period and the re-injury term of those
    days. ``since`` is the days-since-injury count after day *t* (0 after an onset).
    """
    survive = np.ones_like(strain)
    s = strain
    for k in range(1, horizon + 1):
        s = s + (insult - s) / _INJURY_STRAIN_DAYS
        since_k = since + (k - 1)  # the count that day's draw sees
        returned = np.maximum(since_k - _INJURY_REFRACTORY_DAYS, 0.0)
        log_h = (np.log(_INJURY_BASE * susceptibility) + s
                 + _INJURY_REINJURY * np.exp(-returned / _INJURY_REINJURY_DAYS))
        h = np.where(since_k > _INJURY_REFRACTORY_DAYS, np.minimum(np.exp(log_h), 1.0), 0.0)
        survive = survive * (1.0 - h)
    return 1.0 - survive


def _injury_horizon_oracle(risk_ahead: np.ndarray, injury: np.ndarray, keep: np.ndarray,
                           horizon: int = INJURY_HORIZON) -> float:
    """AUROC of the simulator's own forecast (`_injury_risk_ahead`) for the family's label.

    The label of day *t* is an onset on *t+1..t+horizon*
    (`features_nets.INJURY_HORIZON`). Rows: days present with a full horizon ahead,
    from day 13 on (a full 14-day window). The reference for the injury family's
    AUROC: what the true hidden state ranks (a model that reads where the load is
    heading can still beat it a little, the forecast holds today's insult fixed).
    """
    n, T = risk_ahead.shape
    if T <= horizon + 13:
        return float("nan")
    ends = np.arange(13, T - horizon)
    ahead = np.lib.stride_tricks.sliding_window_view(injury[:, 1:].astype(bool), horizon,
                                                     axis=1)[:, ends]
    label = np.asarray(ahead.any(axis=2))
    rows = keep[:, ends]
    return _auroc(risk_ahead[:, ends][rows], label[rows])


def _latent_frame(
    sim: dict[str, np.ndarray], keep: np.ndarray, ids: np.ndarray, dates: pd.DatetimeIndex
) -> pd.DataFrame:
    """Hidden daily truth, every simulated day (also the ones absent from the rows)."""
    n, T = keep.shape
    return pd.DataFrame({
        "athlete_id": pd.array(np.repeat(ids, T), dtype="string"),
        "date": np.tile(dates.to_numpy(), n),
        "present": keep.ravel(),
        "tss": sim["tss"].ravel(),
        "ftp_w": sim["ftp"].ravel(),
        "w_prime_j": sim["w_prime"].ravel(),
        "ctl": sim["ctl"].ravel(),
        "atl": sim["atl"].ravel(),
        "tsb": sim["tsb"].ravel(),
        "acwr": (sim["atl"] / np.maximum(sim["ctl"], 1e-6)).ravel(),
        "ill": sim["ill"].astype(bool).ravel(),
        "injury_hazard": sim["hazard"].ravel(),
        "injury_strain": sim["strain"].ravel(),
        "injury_risk_ahead": sim["risk_ahead"].ravel(),
        "injury": sim["injury"].ravel(),
        **{k: sim[k].ravel() for k in sim if k.startswith("sign_")},
        "recovery_true": sim["recovery"].ravel(),
        "recovery_expected_next": sim["expected_next"].ravel(),
    })


def _draw_wearable_off(rate: np.ndarray, days: int, rng: np.random.Generator) -> np.ndarray:
    """Days the wearable was off: a two-state Markov chain, mean streak 2.5 days."""
    n = len(rate)
    p_stay = 0.6
    p_start = np.clip(rate * (1 - p_stay) / np.maximum(1 - rate, 1e-6), 0, 1)
    off = np.zeros((n, days), dtype=bool)
    u = rng.random((n, days))
    state = u[:, 0] < rate
    off[:, 0] = state
    for t in range(1, days):
        state = np.where(state, u[:, t] < p_stay, u[:, t] < p_start)
        off[:, t] = state
    return off


def _simulate_power(
    p: dict[str, np.ndarray], plan: dict[str, np.ndarray], sim: dict[str, np.ndarray],
    prof: _ProfileParams, rng: np.random.Generator,
) -> np.ndarray:
    """Best mean power (W) per ride and duration, shape (A, T, 8); NaN without a ride.

    Each ride reaches a random, usually sub-maximal share of that day's curve (lower
    when fatigued or ill); a few rides are races that go near all-out. Durations longer
    than the ride are NaN, and the result is made non-increasing with duration, as any
    real best-efforts table is.
    """
    tss, ftp, w_prime, tsb, ill_sev = (
        sim[k] for k in ("tss", "ftp", "w_prime", "tsb", "ill_sev")
    )
    n, T = tss.shape
    dtype = plan["type"]
    rode = tss > 0
    intensity = np.where(_TYPE_IF[dtype] > 0, _TYPE_IF[dtype], 0.62)  # unplanned rides
    eff_type = np.where((dtype == REST) & rode, ENDURANCE, dtype)
    ride_s = tss / (intensity**2 * 100) * 3600
    day_cap = 1 - 0.02 * np.clip(-tsb / 30, 0, 1.5) - 0.05 * ill_sev
    curve = _curve_shape(ftp, w_prime, p["pmax"][:, None], p["long_decay"][:, None])
    effort = (
        _EFFORT_MEAN[eff_type]
        + 0.025 * rng.standard_normal((n, T, 1))
        + prof.effort_sd * rng.standard_normal((n, T, len(POWER_DURATIONS_S)))
    )
    race = rng.random((n, T)) < 0.02
    effort = np.where(race[..., None], rng.uniform(0.95, 1.0, (n, T, 8)), effort)
    effort = np.clip(effort, 0.25, 1.0)
    power = curve * day_cap[..., None] * effort
    too_long = np.asarray(POWER_DURATIONS_S)[None, None, :] > ride_s[..., None]
    power = np.where(too_long | ~rode[..., None], np.nan, power)
    # Non-increasing in duration: a best 5-min power is also a 1-min power.
    for j in range(power.shape[2] - 2, -1, -1):
        power[:, :, j] = np.fmax(power[:, :, j], power[:, :, j + 1])
    return np.round(np.clip(power, 0, 2500), 0)


# --------------------------------------------------------------------------- writing


#: Sub-folder of a simulation folder that holds the hidden truth (no data reader looks
#: inside it: a canonical folder source reads only the files directly in the folder).
TRUTH_DIR = "truth"
#: The hidden-truth Parquet files, written under `TRUTH_DIR`.
TRUTH_FILES: tuple[str, ...] = ("athlete_params.parquet", "latent.parquet")


def truth_paths(out_dir: Path) -> dict[str, Path]:
    """Where `write_simulation` puts the hidden truth of ``out_dir``: ``params``, ``latent``."""
    base = Path(out_dir) / TRUTH_DIR
    return {"params": base / "athlete_params.parquet", "latent": base / "latent.parquet"}


def write_simulation(result: SimulationResult, out_dir: Path) -> Path:
    """Write a simulation atomically and return the canonical Parquet path.

    Files: ``athletes.parquet`` (canonical rows, the only data file), ``truth.json``
    (noise floor, profile, seed, size) and, under ``truth/``, the hidden truth:
    ``truth/athlete_params.parquet`` (hidden parameters) and ``truth/latent.parquet``
    (hidden daily truth). The truth Parquet files live in a sub-folder so that
    ``veloready train --data out_dir`` reads only the athletes (a folder source does not
    descend into sub-folders). Truth files an older version wrote beside the data are
    removed. Each file is written to a temporary file and renamed, so a reader never
    sees half a file; ``truth.json`` goes last.
    """
    out_dir = Path(out_dir)
    rows = result.frame
    if len(result.latent):
        days = int(result.latent["date"].nunique())
    else:  # a result built by hand: the longest athlete span in the rows
        spans = rows.groupby("athlete_id")["date"].agg(lambda d: (d.max() - d.min()).days + 1)
        days = int(spans.max()) if len(spans) else 0
    truth = {
        "profile": result.profile,
        "seed": result.seed,
        "n_athletes": int(len(result.athletes)),
        "days": days,
        "start_date": str(rows["date"].min().date()) if len(rows) else None,
        "noise_floor": {k: (None if not np.isfinite(v) else float(v))
                        for k, v in result.noise_floor.items()},
        "noise_floor_method": (
            f"E[recovery(t+1) | hidden end-of-day-t state] from {NOISE_FLOOR_DRAWS} "
            "re-draws of the next morning; RMSE over days t whose row and recovery are "
            "present and whose next-day recovery is observed; Monte Carlo variance "
            "subtracted"
        ),
        "athlete_profiles": (
            {str(a): str(v) for a, v in zip(result.athletes["athlete_id"],
                                            result.athletes["profile"], strict=True)}
            if "profile" in result.athletes else {}
        ),
        **({"mixed_easy_share": MIXED_EASY_SHARE} if result.profile == "mixed" else {}),
        "truth_files": [f"{TRUTH_DIR}/{name}" for name in TRUTH_FILES
                        if name != "latent.parquet" or len(result.latent)],
    }
    paths = truth_paths(out_dir)
    paths["params"].parent.mkdir(parents=True, exist_ok=True)
    out = out_dir / "athletes.parquet"
    atomic_write_with(out, lambda p: rows.to_parquet(p, index=False))
    atomic_write_with(paths["params"], lambda p: result.athletes.to_parquet(p, index=False))
    if len(result.latent):
        atomic_write_with(paths["latent"], lambda p: result.latent.to_parquet(p, index=False))
    elif paths["latent"].exists():
        paths["latent"].unlink()  # a stale truth of an earlier simulation
    for legacy in TRUTH_FILES:  # where versions before the truth/ folder wrote them
        (out_dir / legacy).unlink(missing_ok=True)
    atomic_write_with(out_dir / "truth.json",
                  lambda p: p.write_text(json.dumps(truth, indent=2), encoding="utf-8"))
    return out


# ----------------------------------------------------------------------- calibration


def _wide(frame: pd.DataFrame, col: str, index: pd.DatetimeIndex) -> np.ndarray:
    """One column as an (athlete, calendar day) array; absent days are NaN."""
    athletes = np.sort(frame["athlete_id"].unique())
    if col not in frame:
        return np.full((len(athletes), len(index)), np.nan)
    w = frame.pivot_table(index="athlete_id", columns="date", values=col, aggfunc="first")
    return w.reindex(index=athletes, columns=index).to_numpy(dtype=float)


def _row_corr(x: np.ndarray, y: np.ndarray, min_pairs: int = 20) -> np.ndarray:
    ok = np.isfinite(x) & np.isfinite(y)
    cnt = ok.sum(axis=1)
    xm = np.where(ok, x, 0.0)
    ym = np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = xm.sum(1) / cnt
        my = ym.sum(1) / cnt
        dx = np.where(ok, x - mx[:, None], 0.0)
        dy = np.where(ok, y - my[:, None], 0.0)
        r = (dx * dy).sum(1) / np.sqrt((dx**2).sum(1) * (dy**2).sum(1))
    return np.where(cnt >= min_pairs, r, np.nan)


def _rolling_prev_mean(x: np.ndarray, window: int, min_periods: int) -> np.ndarray:
    """NaN-aware mean of the previous ``window`` days (today excluded)."""
    ok = np.isfinite(x)
    cs = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(np.where(ok, x, 0.0), 1)], 1)
    cc = np.concatenate([np.zeros((x.shape[0], 1)), np.cumsum(ok, 1)], 1)
    idx = np.arange(x.shape[1])
    lo = np.maximum(idx - window, 0)
    s = cs[:, idx] - cs[:, lo]
    c = cc[:, idx] - cc[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c >= min_periods, s / c, np.nan)


def _median(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def describe_calibration(frame: pd.DataFrame) -> dict[str, float]:
    """Measured statistics to compare with what real wearable exports show.

    Works on any canonical frame (simulated or real). Per-athlete statistics are
    computed on the athlete's calendar (absent days are gaps, not neighbours) and the
    median over athletes is returned, so differences *between* athletes do not inflate
    within-athlete correlations.

    Returns:
        ``recovery_sd``, ``recovery_lag1_autocorr``, ``recovery_hrv_delta_corr_7d`` and
        ``_28d`` (recovery vs that morning's HRV % change from the mean of the previous
        7 / 28 days), ``recovery_prev_strain_corr`` (vs the previous day's TSS),
        ``hrv_cv``, ``hrv_lag1_autocorr``, ``missing_share`` (pooled share of calendar
        days absent or with no wearable value), ``missing_share_median_athlete`` and
        ``n_athletes``. A statistic that cannot be computed (e.g. no HRV) is NaN.
    """
    if frame.empty:
        raise ValueError("describe_calibration: frame has no rows")
    df = frame.copy()
    df["date"] = pd.to_datetime(df["date"]).dt.normalize()
    df["athlete_id"] = df["athlete_id"].astype(str)
    index = pd.date_range(df["date"].min(), df["date"].max(), freq="D")
    df = df.sort_values(["athlete_id", "date"])
    rec = _wide(df, "recovery_score", index)
    hrv = _wide(df, "hrv_ms", index)
    tss = _wide(df, "tss", index)
    present = _wide(df.assign(_one=1.0), "_one", index)

    sensors = [c for c in ("hrv_ms", "resting_hr", "sleep_score", "recovery_score") if c in df]
    any_sensor = df[sensors].notna().any(axis=1) if sensors else pd.Series(False, df.index)
    sensed = _wide(df.assign(_s=any_sensor.astype(float).where(any_sensor)), "_s", index)

    first = np.argmax(np.isfinite(present), axis=1)
    last = present.shape[1] - 1 - np.argmax(np.isfinite(present[:, ::-1]), axis=1)
    span = last - first + 1
    missing = span - np.isfinite(sensed).sum(axis=1)

    def lag1(x: np.ndarray) -> np.ndarray:
        return _row_corr(x[:, 1:], x[:, :-1])

    pct7 = hrv / _rolling_prev_mean(hrv, 7, 4) - 1
    pct28 = hrv / _rolling_prev_mean(hrv, 28, 10) - 1
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # an athlete without HRV -> NaN
        hrv_cv = np.nanstd(hrv, axis=1) / np.nanmean(hrv, axis=1)
        rec_sd = np.nanstd(rec, axis=1, ddof=1)
    return {
        "recovery_sd": _median(rec_sd),
        "recovery_lag1_autocorr": _median(lag1(rec)),
        "recovery_hrv_delta_corr_7d": _median(_row_corr(rec, pct7)),
        "recovery_hrv_delta_corr_28d": _median(_row_corr(rec, pct28)),
        "recovery_prev_strain_corr": _median(_row_corr(rec[:, 1:], tss[:, :-1])),
        "hrv_cv": _median(hrv_cv),
        "hrv_lag1_autocorr": _median(lag1(hrv)),
        "missing_share": float(missing.sum() / span.sum()),
        "missing_share_median_athlete": _median(missing / span),
        "n_athletes": float(rec.shape[0]),
    }
