"""Athlete ids are data: the storage-key mapping and what happens to unusable ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers_data import toy_athlete
from veloready_pipeline.config import load_settings
from veloready_pipeline.ids import (
    MAX_ID_CHARS,
    MAX_PLAIN_CHARS,
    athlete_key,
    id_problem,
    is_plain,
    key_collisions,
)
from veloready_pipeline.lifecycle.manifests import export_dir
from veloready_pipeline.lifecycle.store import registered_name
from veloready_pipeline.validation import validate_frame, write_quarantine_reports

KEY = re.compile(r"[a-z0-9][a-z0-9._-]*")
ODD = ["x y", "x-y", "x/y", "..", "../../etc", "a/../../b", "é" * 3, "Zoë Müller",
       "山田太郎", "x" * 300, "SIM-0001", "sim-0001 ", "sim--0001", "a..b", ".hidden",
       "-lead", "x:y", "x'y", 'x"y', "%2e%2e", "CON", "🚴‍♀️"]


def _key_is_safe(key: str) -> None:
    assert KEY.fullmatch(key), key
    assert key not in (".", "..") and len(key) <= MAX_PLAIN_CHARS
    assert "/" not in key and ":" not in key and key == key.lower()


@pytest.mark.parametrize("aid", ["sim-0001", "p01", "i12345", "a1", "r_2", "a.b", "x-y"])
def test_plain_ids_keep_their_names(aid: str) -> None:
    assert is_plain(aid) and athlete_key(aid) == aid
    assert registered_name(load_settings(), "recovery", aid) == f"veloready-recovery-{aid}"


@pytest.mark.parametrize("aid", ODD)
def test_odd_ids_get_a_safe_readable_key(aid: str) -> None:
    key = athlete_key(aid)
    _key_is_safe(key)
    if not is_plain(aid):
        slug, digest = key.rsplit("--", 1)
        assert re.fullmatch(r"[0-9a-f]{10}", digest) and "--" not in slug


def test_space_and_dash_get_different_models_and_folders(veloready_home: Path) -> None:
    s = load_settings()
    assert registered_name(s, "recovery", "x y") != registered_name(s, "recovery", "x-y")
    assert export_dir(s, "recovery", "x y", "1") != export_dir(s, "recovery", "x-y", "1")
    assert athlete_key("x y").startswith("x-y--")  # readable slug, then the hash
    assert len(set(map(athlete_key, ODD))) == len(ODD)


@pytest.mark.parametrize("aid", ["..", "../../etc", "a/../../b", "x" * 300, "/abs"])
def test_export_folder_stays_inside_its_family_folder(veloready_home: Path, aid: str) -> None:
    s = load_settings()
    folder = export_dir(s, "recovery", aid, "3")
    root = (s.resolve(s.paths.data_dir) / "exports" / "recovery").resolve()
    assert folder.resolve().parent.parent == root
    assert len(folder.parent.name) <= MAX_PLAIN_CHARS


ids = st.text(min_size=1, max_size=80)
plainish = st.from_regex(r"[a-z0-9][a-z0-9._ /-]{0,20}", fullmatch=True)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(ids, plainish), min_size=2, max_size=30, unique=True))
def test_mapping_is_injective_and_safe_on_random_ids(aids: list[str]) -> None:
    keys = [athlete_key(a) for a in aids]
    for k in keys:
        _key_is_safe(k)
    assert len(set(keys)) == len(aids), dict(zip(aids, keys, strict=True))
    assert key_collisions(aids) == {}


@settings(max_examples=300, deadline=None)
@given(ids)
def test_mapping_is_stable_and_plain_means_identity(aid: str) -> None:
    assert athlete_key(aid) == athlete_key(str(aid))
    assert (athlete_key(aid) == aid) == is_plain(aid)
    # a hashed key can never be taken by a plain id (it always holds "--")
    assert is_plain(aid) or not is_plain(athlete_key(aid))


def test_key_collisions_are_reported_both_ways(monkeypatch) -> None:
    from veloready_pipeline import ids as ids_mod

    monkeypatch.setattr(ids_mod, "id_hash", lambda _aid: "0" * 10)  # force a clash
    assert key_collisions(["x y", "x/y", "ok"]) == {"x y": ["x/y"], "x/y": ["x y"]}


@pytest.mark.parametrize(("aid", "why"), [
    ("   ", "empty or only whitespace"),
    ("", "empty or only whitespace"),
    ("a\nb", "control character U+000A at position 1"),
    ("a\x00", "control character U+0000"),
    ("\ufeffsim-0001", "invisible format character U+FEFF"),
    ("ad\u202emin", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
    ("x" * (MAX_ID_CHARS + 1), f"at most {MAX_ID_CHARS}"),
    ("a\ud800", "unpaired surrogate U+D800"),
])
def test_unusable_ids_are_named(aid: str, why: str) -> None:
    problem = id_problem(aid)
    assert problem is not None and why in problem
    _key_is_safe(athlete_key(aid))  # even an unusable id gets a report file name


@pytest.mark.parametrize("aid", ODD + ["x" * MAX_ID_CHARS, "فرزانه\u200cمحمدی"])
def test_odd_but_usable_ids_pass(aid: str) -> None:
    assert id_problem(aid) is None


def test_unusable_ids_are_quarantined_by_validation_with_reports(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.concat([toy_athlete(a, n=30, seed=i) for i, a in
                       enumerate(["ok-1", "a\nb", "   ", "x/../y", "x" * 300])],
                      ignore_index=True)
    outcome = validate_frame(frame, max_gap_days=30)
    assert set(outcome.quarantined) == {"a\nb", "   "}
    why = outcome.quarantined["a\nb"].first_failure()
    assert why.startswith("athlete_id: usable_athlete_id - athlete id contains control "
                          "character U+000A"), why
    assert set(outcome.clean["athlete_id"]) == {"ok-1", "x/../y", "x" * 300}
    written = write_quarantine_reports(outcome, tmp_path / "q")
    assert all(p.parent == tmp_path / "q" for p in written)
    assert {p.name for p in written} == {f"{athlete_key(a)}.{ext}" for a in ("a\nb", "   ")
                                         for ext in ("md", "json")} | {"index.json",
                                                                   "data_notes.json"}


def test_key_clash_quarantines_both_athletes(monkeypatch) -> None:
    import pandas as pd

    from veloready_pipeline import ids as ids_mod

    monkeypatch.setattr(ids_mod, "id_hash", lambda _aid: "0" * 10)
    frame = pd.concat([toy_athlete(a, n=30, seed=i) for i, a in
                       enumerate(["x y", "x/y", "ok"])], ignore_index=True)
    outcome = validate_frame(frame, max_gap_days=30)
    assert set(outcome.quarantined) == {"x y", "x/y"}
    assert "same storage key as ['x/y']" in outcome.quarantined["x y"].first_failure()
