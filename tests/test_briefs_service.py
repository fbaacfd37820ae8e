"""The brief stages chained without Prefect (rules provider), and their helpers."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from veloready_pipeline.briefs import service
from veloready_pipeline.briefs.inputs import make_brief_inputs
from veloready_pipeline.briefs.llm import LLMResult
from veloready_pipeline.briefs.store import BriefStore
from veloready_pipeline.config import Settings

DAY = dt.date(2026, 3, 10)


def structured(text: str, *, tss: int, max_zone: int, intervals: bool = False) -> str:
    return json.dumps({"session_type": "endurance", "max_zone": max_zone, "tss": tss,
                       "intervals": intervals, "race": False, "text": text})


def frame(n: int = 3, days: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    return pd.DataFrame({
        "athlete_id": np.repeat([f"r{i}" for i in range(n)], days),
        "date": np.tile(pd.date_range(end=pd.Timestamp(DAY), periods=days, freq="D"), n),
        "hrv_ms": rng.normal(60, 5, n * days), "resting_hr": rng.normal(50, 2, n * days),
        "sleep_score": 80.0, "tss": 60.0, "recovery_score": 70.0,
    })


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(briefs={"provider": "rules", "chunk_size": 2},
                    paths={"brief_store_url": f"sqlite:///{tmp_path / 'b.db'}"})


def test_rules_run_and_rerun(settings: Settings) -> None:
    first = service.run_daily_briefs(frame(), DAY, settings)
    assert first["counts"] == {"briefs": 3, "rules": 3, "llm": 0, "cached": 0, "written": 3,
                               "fallbacks": 0, "refused": 0, "input_errors": 0,
                               "inactive": 0}
    assert first["requests"] == 0 and first["cost_usd"] == 0 and first["mode"] == "rules"
    second = service.run_daily_briefs(frame(), DAY, settings)
    assert second["counts"]["cached"] == 3
    assert [b["text"] for b in second["briefs"]] == [b["text"] for b in first["briefs"]]


def test_auto_without_key_or_endpoint_is_rules(tmp_path) -> None:
    s = Settings(paths={"brief_store_url": f"sqlite:///{tmp_path / 'b.db'}"})
    assert service.run_daily_briefs(frame(1), DAY, s)["provider"] == "rules"


def test_summary_markdown_lists_counts_fallbacks_and_failures(settings: Settings) -> None:
    bad = frame(2)
    bad.loc[(bad.athlete_id == "r1") & (bad.date == pd.Timestamp(DAY)), "sleep_score"] = 140.0
    summary = service.run_daily_briefs(bad, DAY, settings, athlete_ids=["r0", "r1", "nobody"])
    md = service.summary_markdown(summary)
    assert "# Daily briefs 2026-03-10" in md and "| 1 | 0 | 1 | 0 | 0 | 0 | 1 | 1 |" in md
    assert "`r1` field `sleep_score`" in md and "`nobody`: athlete not found" in md


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2026-03-10", DAY), (DAY, DAY), ("latest", DAY), (" 2026-03-10 ", DAY)],
)
def test_parse_brief_date(value, expected) -> None:
    assert service.parse_brief_date(value, frame(1)) == expected


def test_parse_brief_date_defaults_to_today_utc() -> None:
    assert service.parse_brief_date(None) == dt.datetime.now(dt.UTC).date()
    assert service.parse_brief_date("today") == dt.datetime.now(dt.UTC).date()


@pytest.mark.parametrize("value", ["10/03/2026", "2026-13-01", "yesterday"])
def test_bad_dates_are_rejected(value) -> None:
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        service.parse_brief_date(value)


def test_latest_needs_data() -> None:
    with pytest.raises(ValueError, match="latest"):
        service.parse_brief_date("latest")


def test_chunks_cover_every_plan_once(settings: Settings) -> None:
    inputs = service.build_inputs(frame(5), DAY, None, settings).inputs
    plans = service.plan_briefs(inputs, settings.briefs, "rules")
    chunks = service.chunk_plans(plans, 2)
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert [p.key for c in chunks for p in c] == [p.key for p in plans]


def test_guard_records_why_an_llm_brief_was_not_used(settings: Settings) -> None:
    i = make_brief_inputs(athlete_id="x", date=DAY, data_date=DAY, recovery=30.0,
                          target_tss_low=60.0, target_tss_high=80.0)
    b = settings.briefs.model_copy(update={"provider": "llm"})
    plan = service.plan_briefs([i], b, "llm")[0]
    cases = [
        (None, "not_generated"),
        (LLMResult(key=plan.key, error="budget"), "budget"),
        (LLMResult(key=plan.key, text="Go hard. 200 TSS of Z5 intervals."),
         "guardrail:unstructured:not_json"),
        (LLMResult(key=plan.key, text=structured("Go hard. 200 TSS of Z5 intervals.",
                                                 tss=200, max_zone=5, intervals=True)),
         "guardrail:declared_tss_over_cap:200>55"),
    ]
    for result, reason in cases:
        gen = service.Generation(results={plan.key: result} if result else {})
        [record] = service.guard_briefs([plan], gen, b, "llm")
        assert record.source == "rules" and record.text == plan.rules_text
        assert record.fallback_reason.startswith(reason)
    text = "Easy day, recovery is low. Keep it to 50 TSS in Z1-Z2."
    ok = LLMResult(key=plan.key, text=structured(text, tss=50, max_zone=2),
                   prompt_tokens=900, completion_tokens=20, cost_usd=0.0002, attempts=1,
                   model="gpt-4o-mini")
    [record] = service.guard_briefs([plan], service.Generation(results={plan.key: ok}), b, "llm")
    assert record.source == "llm" and record.fallback_reason is None
    assert record.text == text  # the brief's text, not the raw JSON reply
    assert (record.prompt_tokens, record.cost_usd, record.model) == (900, 0.0002, "gpt-4o-mini")
    assert record.prompt_hash and record.suffix is None


def test_load_brief_data_reads_a_canonical_file(tmp_path, settings: Settings) -> None:
    path = tmp_path / "rows.parquet"
    frame(2).to_parquet(path, index=False)
    loaded = service.load_brief_data(str(path), settings)
    assert sorted(loaded["athlete_id"].astype(str).unique()) == ["r0", "r1"]


def test_run_sync_works_inside_a_running_loop() -> None:
    import asyncio

    async def inner() -> int:
        return 41

    async def outer() -> int:
        return service.run_sync(inner()) + 1

    assert asyncio.run(outer()) == 42


def test_champion_predictions_are_read_when_a_store_exists(tmp_path) -> None:
    import sqlalchemy as sa

    s = Settings(briefs={"provider": "rules"},
                 paths={"brief_store_url": f"sqlite:///{tmp_path / 'b.db'}",
                        "prediction_store_url": f"sqlite:///{tmp_path / 'p.db'}"})
    assert service.load_champion_predictions(s, DAY) == {}  # no store yet: no predictions
    assert not (tmp_path / "p.db").exists()  # and none is created

    meta = sa.MetaData()
    table = sa.Table(
        "champion_predictions", meta,
        sa.Column("id", sa.Integer, primary_key=True), sa.Column("athlete_id", sa.String),
        sa.Column("family", sa.String), sa.Column("feature_date", sa.Date),
        sa.Column("target_date", sa.Date), sa.Column("prediction", sa.Float),
    )
    engine = sa.create_engine(s.paths.prediction_store_url)
    meta.create_all(engine)
    one = dt.timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [
            {"athlete_id": "r0", "family": "recovery", "feature_date": DAY - one,
             "target_date": DAY, "prediction": 50.0},  # about today: not tomorrow
            {"athlete_id": "r0", "family": "recovery", "feature_date": DAY,
             "target_date": DAY + one, "prediction": 77.0},
            {"athlete_id": "r1", "family": "injury", "feature_date": DAY,
             "target_date": DAY + one, "prediction": 90.0},
        ])
    engine.dispose()
    assert service.load_champion_predictions(s, DAY) == {"r0": {"predicted_recovery": 77.0}}
    summary = service.run_daily_briefs(frame(2), DAY, s)
    [r0] = [r for r in BriefStore(s.brief_store()).for_date(DAY) if r.athlete_id == "r0"]
    assert r0.inputs["predicted_recovery"] == 77.0 and summary["counts"]["briefs"] == 2
