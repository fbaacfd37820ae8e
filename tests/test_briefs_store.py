"""The brief store: keys, 24 h validity, replace-on-write, any SQLAlchemy URL."""

from __future__ import annotations

import datetime as dt

import pytest

from veloready_pipeline.briefs.store import BriefRecord, BriefStore, make_brief_key

DAY = dt.date(2026, 3, 10)
NOW = dt.datetime(2026, 3, 10, 4, 0)


def record(athlete: str = "a1", text: str = "Rest. Sleep.", hours: float = 24, **kw) -> BriefRecord:
    values = dict(
        key=make_brief_key(athlete, DAY, "v1"), athlete_id=athlete, brief_date=DAY,
        prompt_version="v1", source="llm", provider="llm", model="gpt-4o-mini",
        decision_kind="rest", text=text, inputs={"date": DAY, "x": (1, 2)},
        decision={"kind": "rest"}, prompt_tokens=900, completion_tokens=60, cost_usd=0.00017,
        attempts=1, rules_version="r1", created_at=NOW,
        expires_at=NOW + dt.timedelta(hours=hours),
    )
    values.update(kw)
    return BriefRecord(**values)


@pytest.fixture
def store(tmp_path) -> BriefStore:
    return BriefStore(f"sqlite:///{tmp_path / 'nested' / 'briefs.db'}")


def test_key_format() -> None:
    assert make_brief_key("a1", DAY, "v1") == "a1:2026-03-10:v1"
    assert make_brief_key("a1", DAY, "v2", "rules") == "a1:2026-03-10:v2:rules"


def test_round_trip_keeps_everything(store: BriefStore) -> None:
    store.save([record()])
    got = store.valid(["a1:2026-03-10:v1"], NOW)["a1:2026-03-10:v1"]
    assert got.cached and got.text == "Rest. Sleep." and got.source == "llm"
    assert got.inputs == {"date": "2026-03-10", "x": [1, 2]}
    assert (got.prompt_tokens, got.completion_tokens, got.cost_usd) == (900, 60, 0.00017)
    assert store.location().endswith("nested/briefs.db")


def test_records_expire_after_their_validity(store: BriefStore) -> None:
    store.save([record(hours=24)])
    assert store.valid(["a1:2026-03-10:v1"], NOW + dt.timedelta(hours=23, minutes=59))
    assert not store.valid(["a1:2026-03-10:v1"], NOW + dt.timedelta(hours=24))


def test_save_replaces_the_same_key(store: BriefStore) -> None:
    store.save([record(text="old one. yes.")])
    store.save([record(text="new one. yes.")])
    assert store.count() == 1
    assert store.for_date(DAY)[0].text == "new one. yes."


def test_other_prompt_versions_are_other_keys(store: BriefStore) -> None:
    store.save([record()])
    assert store.valid([make_brief_key("a1", DAY, "v2")], NOW) == {}


def test_many_keys_are_looked_up_in_chunks(store: BriefStore) -> None:
    records = [record(f"a{i:04d}", key=make_brief_key(f"a{i:04d}", DAY, "v1"))
               for i in range(1200)]
    assert store.save(records) == 1200
    assert len(store.valid([r.key for r in records], NOW)) == 1200


@pytest.mark.postgres
def test_postgres_url_works() -> None:
    sa = pytest.importorskip("sqlalchemy")
    url = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
    try:
        sa.create_engine(url).connect().close()
    except Exception:  # noqa: BLE001 - no server here: nothing to test
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    store = BriefStore(url)
    key = "pg-test:2026-03-10:v1"
    store.save([record("pg-test", key=key)])
    try:
        assert store.valid([key], NOW)[key].athlete_id == "pg-test"
        assert "postgres" in store.location()
    finally:
        from veloready_pipeline.briefs.store import briefs_table

        with store.engine.begin() as conn:
            conn.execute(sa.delete(briefs_table).where(briefs_table.c.key == key))


@pytest.mark.postgres
def test_postgres_keeps_a_long_unicode_athlete_id() -> None:
    """An id the pipeline accepts (300 characters, `/`, `..`, non-Latin) is stored as is
    on PostgreSQL, in a fresh database so an older table's column types cannot hide it."""
    import os

    sa = pytest.importorskip("sqlalchemy")
    admin_url = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        admin.connect().close()
    except Exception:  # noqa: BLE001 - no server here: nothing to test
        pytest.skip("PostgreSQL not reachable on 127.0.0.1:5432")
    name = f"veloready_briefs_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        store = BriefStore(f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}")
        athlete = "Zoë/../山田 " + "x" * 300
        key = make_brief_key(athlete, DAY, "v1")
        store.save([record(athlete, key=key)])
        assert store.valid([key], NOW)[key].athlete_id == athlete
        store.engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
