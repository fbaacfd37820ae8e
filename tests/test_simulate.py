"""Tests for the physiological simulator.

Three kinds: contract (determinism, schema, files), calibration (the realistic profile
looks like wearable exports; the easy one is learnable; noise floors are where they
must be) and physiology (power curves, FTP following fitness, injury hazard following
the warning signs). Cohorts are module-scoped so the whole file stays fast.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from veloready_pipeline.schema import COLUMNS_BY_NAME, POWER_COLUMNS, REQUIRED_COLUMNS
from veloready_pipeline.simulate import (
    MIXED_EASY_SHARE,
    SimulationResult,
    describe_calibration,
    mixed_profiles,
    simulate_athletes,
    truth_paths,
    write_simulation,
)
from veloready_pipeline.training_load import ATL_DAYS, CTL_DAYS, ewma_load, training_load

SEED = 20260101


@pytest.fixture(scope="module")
def realistic() -> SimulationResult:
    return simulate_athletes(40, 180, SEED, "realistic")


@pytest.fixture(scope="module")
def easy() -> SimulationResult:
    return simulate_athletes(40, 180, SEED, "easy")


@pytest.fixture(scope="module")
def small() -> SimulationResult:
    return simulate_athletes(3, 60, SEED)


# ----------------------------------------------------------------------- contract


def test_same_seed_gives_identical_result(small: SimulationResult) -> None:
    again = simulate_athletes(3, 60, SEED)
    pd.testing.assert_frame_equal(small.frame, again.frame)
    pd.testing.assert_frame_equal(small.athletes, again.athletes)
    assert small.noise_floor == again.noise_floor


def test_different_seeds_differ(small: SimulationResult) -> None:
    other = simulate_athletes(3, 60, SEED + 1)
    assert not np.allclose(
        small.frame["hrv_ms"].to_numpy()[:50], other.frame["hrv_ms"].to_numpy()[:50],
        equal_nan=True,
    )
    assert small.noise_floor["recovery_rmse"] != other.noise_floor["recovery_rmse"]


@pytest.mark.parametrize("profile", ["realistic", "easy"])
def test_rows_are_canonical_and_in_range(profile: str, request: pytest.FixtureRequest) -> None:
    frame = request.getfixturevalue(profile).frame
    assert set(REQUIRED_COLUMNS) <= set(frame.columns)
    unknown = set(frame.columns) - set(COLUMNS_BY_NAME)
    assert not unknown, f"non-canonical columns {unknown}"
    assert frame["date"].dtype == "datetime64[ns]"
    assert (frame["date"] == frame["date"].dt.normalize()).all()
    assert frame["athlete_id"].str.fullmatch(r"sim-\d{4}").all()
    assert not frame.duplicated(["athlete_id", "date"]).any()
    for name in frame.columns:
        col = COLUMNS_BY_NAME[name]
        if col.min is None:
            continue
        values = frame[name].dropna()
        assert values.between(col.min, col.max).all(), (
            f"{profile}: {name} outside {col.min}..{col.max}: "
            f"{values[~values.between(col.min, col.max)].head().tolist()}"
        )
        if col.max_missing_rate is not None:
            worst = frame.groupby("athlete_id")[name].apply(lambda s: s.isna().mean()).max()
            assert worst <= col.max_missing_rate, f"{name} missing {worst:.0%} for an athlete"
    for name in ("alcohol", "injury"):
        assert set(frame[name].dropna().unique()) <= {0.0, 1.0}


def test_plan_columns_agree(realistic: SimulationResult) -> None:
    f = realistic.frame
    assert f["planned_workout"].notna().all()
    rest = f["planned_workout"] == "Rest day"
    assert (rest == (f["planned_tss"] == 0)).all()
    assert f.loc[~rest, "planned_workout"].str.contains(r"\d").all()  # durations in the text
    assert (f["time_available_min"] > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_athletes": 2, "days": 30, "seed": 1, "profile": "hard"}, "profile"),
        ({"n_athletes": 0, "days": 30, "seed": 1}, "n_athletes"),
        ({"n_athletes": 2, "days": 5, "seed": 1}, "days"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        simulate_athletes(**kwargs)


def test_write_simulation_writes_all_files_atomically(small: SimulationResult, tmp_path) -> None:
    out = write_simulation(small, tmp_path / "sim")
    assert out == tmp_path / "sim" / "athletes.parquet"
    names = sorted(p.name for p in (tmp_path / "sim").iterdir())
    assert names == ["athletes.parquet", "truth", "truth.json"]
    hidden = sorted(p.name for p in (tmp_path / "sim" / "truth").iterdir())
    assert hidden == ["athlete_params.parquet", "latent.parquet"]
    assert truth_paths(tmp_path / "sim")["latent"] == tmp_path / "sim" / "truth" / "latent.parquet"
    back = pd.read_parquet(out)
    pd.testing.assert_frame_equal(back, small.frame, check_dtype=False)
    params = pd.read_parquet(truth_paths(tmp_path / "sim")["params"])
    assert {"baseline_hrv", "baseline_rhr", "load_sensitivity", "ftp0", "w_prime"} <= set(
        params.columns
    )
    truth = json.loads((tmp_path / "sim" / "truth.json").read_text())
    assert truth["profile"] == "realistic" and truth["seed"] == SEED
    assert truth["n_athletes"] == 3 and truth["days"] == 60
    assert truth["noise_floor"]["recovery_rmse"] == pytest.approx(
        small.noise_floor["recovery_rmse"]
    )
    assert truth["truth_files"] == ["truth/athlete_params.parquet", "truth/latent.parquet"]


def test_mixed_profile_shares_seed_and_truth(tmp_path) -> None:
    mixed = simulate_athletes(10, 60, SEED, "mixed")
    profiles = mixed.athletes["profile"].astype(str).to_numpy()
    # The stated share, picked from the run's seed, recorded per athlete in the truth.
    assert (profiles == "easy").sum() == round(MIXED_EASY_SHARE * 10)
    assert set(profiles) == {"easy", "realistic"}
    assert list(profiles) == list(mixed_profiles(10, SEED))
    again = simulate_athletes(10, 60, SEED, "mixed")
    pd.testing.assert_frame_equal(mixed.frame, again.frame)
    pd.testing.assert_frame_equal(mixed.athletes, again.athletes)
    other = [list(mixed_profiles(10, s)) for s in range(SEED + 1, SEED + 6)]
    assert any(o != list(profiles) for o in other)
    # Each athlete is drawn under its own profile: the easy ones' recovery is far
    # better measured (noise floor ~3.5 against ~16.5 on the 0-100 score).
    floor = mixed.athletes.set_index("athlete_id")["recovery_noise_floor"]
    easy_ids = mixed.athletes["athlete_id"][profiles == "easy"]
    real_ids = mixed.athletes["athlete_id"][profiles == "realistic"]
    assert floor[easy_ids].max() < floor[real_ids].min()
    assert mixed.noise_floor["recovery_rmse_median_athlete_easy"] < 6
    assert mixed.noise_floor["recovery_rmse_median_athlete_realistic"] > 10
    # The profile is truth only: the canonical rows a model reads do not carry it.
    assert "profile" not in mixed.frame.columns
    assert list(mixed.frame.columns) == list(simulate_athletes(2, 30, SEED).frame.columns)
    write_simulation(mixed, tmp_path / "sim")
    truth = json.loads((tmp_path / "sim" / "truth.json").read_text())
    assert truth["profile"] == "mixed" and truth["mixed_easy_share"] == MIXED_EASY_SHARE
    ids = mixed.athletes["athlete_id"]
    assert truth["athlete_profiles"] == dict(zip(ids, profiles, strict=True))
    params = pd.read_parquet(truth_paths(tmp_path / "sim")["params"])
    assert list(params["profile"]) == list(profiles)
    assert "profile" not in pd.read_parquet(tmp_path / "sim" / "athletes.parquet").columns


def test_simulation_folder_reads_as_the_athletes_only(small: SimulationResult, tmp_path) -> None:
    """`simulate --out D` then `train --data D`: the folder source sees only the athletes.

    Truth files an older version wrote beside the data are removed on rewrite.
    """
    from veloready_pipeline.config import SourceSettings
    from veloready_pipeline.sources import detect_source_name, make_source

    folder = tmp_path / "sim"
    folder.mkdir()
    small.latent.to_parquet(folder / "latent.parquet")  # the old layout
    write_simulation(small, folder)
    assert not (folder / "latent.parquet").exists()
    assert detect_source_name(str(folder)) == "canonical"
    loaded = make_source(SourceSettings(name="auto", path=str(folder))).load()
    assert len(loaded.frame) == len(small.frame)
    assert not loaded.frame.duplicated(["athlete_id", "date"]).any()
    assert set(loaded.frame["athlete_id"]) == set(small.frame["athlete_id"])


# -------------------------------------------------------------------- calibration


def test_realistic_profile_matches_wearable_exports(realistic: SimulationResult) -> None:
    cal = describe_calibration(realistic.frame)
    assert 17 <= cal["recovery_sd"] <= 23, cal
    assert 0.1 <= cal["recovery_lag1_autocorr"] <= 0.35, cal
    assert 0.8 <= cal["recovery_hrv_delta_corr_7d"] <= 0.9, cal
    assert 0.8 <= cal["recovery_hrv_delta_corr_28d"] <= 0.9, cal
    assert -0.3 <= cal["recovery_prev_strain_corr"] <= -0.1, cal
    assert 0.13 <= cal["hrv_cv"] <= 0.7, cal
    assert 0.35 <= cal["hrv_lag1_autocorr"] <= 0.55, cal
    assert cal["n_athletes"] == 40


@pytest.mark.parametrize("profile", ["realistic", "easy"])
def test_missing_share_in_range(profile: str, request: pytest.FixtureRequest) -> None:
    res = request.getfixturevalue(profile)
    cal = describe_calibration(res.frame)
    assert 0.05 <= cal["missing_share"] <= 0.20, cal
    # Both kinds of gap exist: absent days and days with the wearable off.
    assert len(res.frame) < 40 * 180
    assert res.frame["recovery_score"].isna().any()


def test_noise_floors_sit_either_side_of_the_gate(
    realistic: SimulationResult, easy: SimulationResult
) -> None:
    assert easy.noise_floor["recovery_rmse"] < 5
    assert realistic.noise_floor["recovery_rmse"] > 12
    # Honest: something about tomorrow is knowable, but not much in the realistic world.
    assert realistic.noise_floor["recovery_rmse"] < realistic.noise_floor["recovery_sd"]
    assert realistic.noise_floor["recovery_r2_ceiling_median_athlete"] < 0.4
    assert easy.noise_floor["recovery_r2_ceiling_median_athlete"] > 0.85
    # A floor is never below the recovery score's own measurement noise.
    assert easy.noise_floor["recovery_rmse"] > 2.5


def test_easy_recovery_is_predictable_from_todays_row(easy: SimulationResult) -> None:
    """A small per-athlete regression on today's row gets near the floor: it is reachable."""
    errors = []
    for _, g in easy.frame.groupby("athlete_id"):
        g = g.set_index("date").asfreq("D")
        load = g["tss"] / 100
        x = pd.DataFrame({"one": 1.0, "tss": load, "tss2": load**2, "tss3": load**3,
                          "log_hrv": np.log(g["hrv_ms"])})
        x["y"] = g["recovery_score"].shift(-1)  # tomorrow's score, today's row
        x = x.dropna()
        cut = int(0.7 * len(x))
        feats, y = x.drop(columns="y").to_numpy(), x["y"].to_numpy()
        coef, *_ = np.linalg.lstsq(feats[:cut], y[:cut], rcond=None)
        errors.append(feats[cut:] @ coef - y[cut:])
    rmse = float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))
    floor = easy.noise_floor["recovery_rmse"]
    assert floor <= rmse < 1.3 * floor
    assert 12 <= easy.noise_floor["recovery_sd"] <= 18


def test_expected_next_recovery_beats_persistence(realistic: SimulationResult) -> None:
    lat = realistic.latent
    nxt = lat.groupby("athlete_id")["recovery_true"].shift(-1)
    ok = nxt.notna()
    oracle = np.sqrt(np.mean((nxt[ok] - lat.loc[ok, "recovery_expected_next"]) ** 2))
    persistence = np.sqrt(np.mean((nxt[ok] - lat.loc[ok, "recovery_true"]) ** 2))
    assert oracle < persistence
    assert oracle == pytest.approx(realistic.noise_floor["recovery_rmse"], rel=0.1)


def test_describe_calibration_handles_frames_without_hrv() -> None:
    days = pd.date_range("2026-01-01", periods=40)
    frame = pd.DataFrame({
        "athlete_id": ["a"] * 40,
        "date": days,
        "recovery_score": np.linspace(20, 80, 40),
        "resting_hr": 50.0,
        "sleep_score": 80.0,
        "tss": 50.0,
    }).drop(index=[5, 6])
    cal = describe_calibration(frame)
    assert np.isnan(cal["hrv_cv"]) and np.isnan(cal["recovery_hrv_delta_corr_7d"])
    assert cal["missing_share"] == pytest.approx(2 / 40)
    with pytest.raises(ValueError, match="no rows"):
        describe_calibration(frame.iloc[0:0])


# ---------------------------------------------------------------------- physiology


def test_load_uses_the_pipeline_recursion(small: SimulationResult) -> None:
    lat = small.latent
    for aid, g in lat.groupby("athlete_id"):
        params = small.athletes.set_index("athlete_id").loc[aid]
        ctl = ewma_load(g["tss"].to_numpy(), CTL_DAYS, start=params["ctl0"])
        atl = ewma_load(g["tss"].to_numpy(), ATL_DAYS, start=params["atl0"])
        np.testing.assert_allclose(g["ctl"].to_numpy(), ctl)
        np.testing.assert_allclose(g["atl"].to_numpy(), atl)
    # The frame's TSS is the ridden TSS on every day that is present.
    present = lat[lat["present"]].reset_index(drop=True)
    np.testing.assert_allclose(present["tss"].to_numpy(), small.frame["tss"].to_numpy())
    assert np.isfinite(training_load(small.frame["tss"].to_numpy())["tsb"]).all()


def test_best_power_is_monotone_and_only_on_ride_days(realistic: SimulationResult) -> None:
    f = realistic.frame
    power = f[list(POWER_COLUMNS)].to_numpy()
    rides = power[np.isfinite(power[:, 0])]
    assert len(rides) > 1000
    diffs = np.diff(rides, axis=1)
    assert not (diffs[np.isfinite(diffs)] > 0).any(), "best power rises with duration"
    # Longer durations only exist where all shorter ones do.
    finite = np.isfinite(rides)
    assert (finite[:, :-1] >= finite[:, 1:]).all()
    assert np.isnan(power[(f["tss"] == 0).to_numpy()]).all()
    # Usually sub-maximal: the typical ride is well below the latent curve at 20 min.
    lat = realistic.latent.set_index(["athlete_id", "date"])["ftp_w"]
    ftp = lat.reindex(pd.MultiIndex.from_frame(f[["athlete_id", "date"]])).to_numpy()
    ratio = f["best_power_1200s"].to_numpy() / ftp
    assert np.nanmedian(ratio) < 0.9
    assert np.nanmax(ratio) < 1.15


def test_ftp_follows_fitness_and_tests_measure_it(realistic: SimulationResult) -> None:
    lat = realistic.latent
    corr = lat.groupby("athlete_id").apply(lambda g: np.corrcoef(g["ftp_w"], g["ctl"])[0, 1])
    assert corr.median() > 0.5
    tests = realistic.frame.dropna(subset=["ftp_test_w"])
    assert tests.groupby("athlete_id").size().mean() >= 3  # every 2-6 weeks
    assert realistic.noise_floor["ftp_rmse_w"] < 0.03 * tests["ftp_test_w"].median()
    assert tests["best_power_1200s"].notna().all()  # a test is a ride with a 20-min effort


def test_injury_hazard_rises_with_warning_signs(realistic: SimulationResult) -> None:
    lat = realistic.latent[realistic.latent["present"]]
    injury = lat["injury"].to_numpy()
    high = (lat["acwr"] > 1.5).to_numpy()
    assert injury[high].mean() > 3 * injury[~high].mean()
    any_sign = lat[[c for c in lat.columns if c.startswith("sign_")]].any(axis=1).to_numpy()
    assert injury[any_sign].mean() > 2 * injury[~any_sign].mean()
    assert 2 <= realistic.athletes["injury_events"].mean() <= 5
    assert realistic.noise_floor["injury_auroc_oracle"] > 0.75
    # The simulator's own forecast ranks the family's label (an onset within a week).
    assert realistic.noise_floor["injury_auroc_oracle_horizon"] > 0.8
    # The frame's labels are the simulated events on the days that are present.
    assert realistic.frame["injury"].sum() == injury.sum()


def _since_injury(injury: np.ndarray) -> np.ndarray:
    """Days since the last onset as the day's draw sees it (huge before the first)."""
    since, count = np.empty(len(injury)), 1e9
    for t, event in enumerate(injury):
        since[t] = count
        count = 0 if event else count + 1
    return since


def test_injury_risk_lingers_for_a_week_after_a_load_spike(realistic: SimulationResult) -> None:
    # Strain memory: in the week after an ACWR > 1.5 day, with the sign already cleared,
    # events are still far more frequent than on the other days outside a spike.
    counts = {"after": [0, 0], "other": [0, 0]}
    for _, g in realistic.latent.groupby("athlete_id"):
        injury, at_risk = g["injury"].to_numpy(), g["injury_hazard"].to_numpy() > 0
        spike = g["acwr"].to_numpy() > 1.5
        after = np.zeros(len(g), dtype=bool)
        for d in np.flatnonzero(spike):
            after[d + 1 : d + 8] = True
        after &= ~spike
        for key, rows in (("after", after & at_risk), ("other", ~after & ~spike & at_risk)):
            counts[key][0] += injury[rows].sum()
            counts[key][1] += rows.sum()
    rate = {k: e / n for k, (e, n) in counts.items()}
    assert counts["after"][0] >= 10 and rate["after"] > 5 * rate["other"]


def test_injury_risk_is_raised_after_a_return(realistic: SimulationResult) -> None:
    # A recent injury is the strongest risk factor: the month after the refractory
    # period carries more events than the days of riders never injured so far.
    returned, never = [0, 0], [0, 0]
    for _, g in realistic.latent.groupby("athlete_id"):
        injury = g["injury"].to_numpy()
        since = _since_injury(injury)
        for acc, rows in ((returned, (since > 21) & (since <= 51)), (never, since > 1e8)):
            acc[0] += injury[rows].sum()
            acc[1] += rows.sum()
    assert returned[0] / returned[1] > 1.5 * never[0] / never[1]


def test_injury_forecast_is_a_probability_and_zero_inside_the_refractory_period(
        realistic: SimulationResult) -> None:
    lat = realistic.latent
    risk = lat["injury_risk_ahead"].to_numpy()
    assert np.isfinite(risk).all() and (risk >= 0).all() and (risk <= 1).all()
    # An onset day's refractory period covers the whole label horizon.
    assert (risk[lat["injury"].to_numpy() > 0] == 0).all()
    assert (risk > 0).mean() > 0.5


def test_injury_events_respect_the_refractory_period(realistic: SimulationResult) -> None:
    for _, g in realistic.latent.groupby("athlete_id"):
        hazard = g["injury_hazard"].to_numpy()
        after_event = np.zeros(len(g), dtype=bool)
        for e in np.flatnonzero(g["injury"].to_numpy()):
            after_event[e + 1 : e + 23] = True
        assert (hazard[after_event] == 0).all()
        assert (hazard[~after_event] > 0).all()
    events = realistic.latent[realistic.latent["injury"] == 1]
    gaps = events.groupby("athlete_id")["date"].diff().dropna().dt.days
    assert (gaps > 21).all()


def test_ftp_tests_follow_each_athletes_own_habit(realistic: SimulationResult) -> None:
    """Planned tests come every 2-6 weeks at a per-athlete rhythm (+-3 days), never
    closer than a week; some riders test often, others rarely."""
    planned = realistic.frame[
        realistic.frame["planned_workout"].str.startswith("FTP test", na=False)
    ]
    means = []
    for _, days in planned.groupby("athlete_id")["date"]:
        gaps = np.diff(days.sort_values().to_numpy()).astype("timedelta64[D]").astype(int)
        # A test in a holiday break or on a day whose row is absent leaves a double gap.
        gaps = gaps[gaps < 1.6 * np.median(gaps)]
        if len(gaps) == 0:
            continue
        assert gaps.min() >= 7
        assert gaps.max() - gaps.min() <= 6  # one habit +-3 days
        means.append(gaps.mean())
    assert min(means) < 21 and max(means) > 35
    # Tests that were ridden as planned are measured; others leave no FTP value.
    done = realistic.frame["ftp_test_w"].notna()
    assert done.sum() >= 0.6 * len(planned)  # ill, injured or skipped: no test
    assert (realistic.frame.loc[done, "planned_workout"].str.startswith("FTP test")).all()


def test_simulate_cli_history_ends_today_so_train_keeps_every_athlete(tmp_path) -> None:
    """`veloready simulate --days 400` (longer than the year so far) must not write rows
    dated after today: `train` would quarantine every athlete for future dates. A fixed
    `--start-date` still gives the same dates on every run."""
    import datetime as dt
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    from veloready_pipeline.config import Settings
    from veloready_pipeline.ingest import load_data, validate_ingested

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]),
               VELOREADY_HOME=str(tmp_path))
    out = tmp_path / "sim"
    proc = subprocess.run([sys.executable, "-m", "veloready_pipeline.cli", "simulate",
                           "--athletes", "2", "--days", "400", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_parquet(out / "athletes.parquet")
    today = dt.datetime.now(dt.UTC).date()
    assert pd.Timestamp(frame["date"].max()).date() == today
    assert pd.Timestamp(frame["date"].min()).date() == today - dt.timedelta(days=399)
    settings = Settings()
    report = validate_ingested(load_data(settings, data=str(out)), settings)
    assert not report.quarantined, report.quarantined

    fixed = tmp_path / "fixed"
    proc = subprocess.run([sys.executable, "-m", "veloready_pipeline.cli", "simulate",
                           "--athletes", "1", "--days", "30", "--start-date", "2026-01-01",
                           "--out", str(fixed)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    dates = pd.read_parquet(fixed / "athletes.parquet")["date"]
    assert str(pd.Timestamp(dates.min()).date()) == "2026-01-01"
