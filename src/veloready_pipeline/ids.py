"""Athlete ids are data: one mapping from an exact id to a safe storage key.

An athlete id comes from the source as text and may hold anything: ``/``, ``..``, spaces,
capitals, accents, 300 characters. Wherever an id becomes a path component (export and
OTA folders, quarantine reports, residual plots) or part of an MLflow registered-model
name, `athlete_key` is used, never the id itself; the exact id stays in the data (MLflow
tags, manifests, summaries).

The mapping (`athlete_key`):

* A *plain* id maps to itself, so existing names (``sim-0001``, ``p01``, ``i12345``) keep
  their folders and registered models. Plain means: 1 to 64 characters of lowercase
  ASCII letters, digits, ``.``, ``_`` and ``-``, starting and ending with a letter or
  digit, and containing neither ``--`` nor ``..``.
* Any other id maps to ``<slug>--<hash>``: the slug is the id folded to lowercase ASCII
  (NFKD, accents dropped), every run of other characters turned into one ``-``, at most
  40 characters (``id`` when nothing is left); the hash is the first 10 hex digits of
  SHA-256 over the exact id's UTF-8 bytes. ``"x y"`` -> ``x-y--<hash>``, ``"Zoë/../a"``
  -> ``zoe-a--<hash>``.

Why this is collision-free: a plain key never contains ``--`` and every hashed key does,
so the two kinds never meet, and a plain id is its own key. Two hashed keys are equal
only if the hashes of the exact ids are (40 bits; within one run's data
`key_collisions` finds such a pair, and validation quarantines both). Keys are
lowercase, so two ids differing only in case never share a folder on a case-insensitive
file system. Every key matches ``[a-z0-9][a-z0-9._-]*``, is at most 64 characters,
is never ``.`` or ``..`` and holds no ``/`` or ``:`` (MLflow refuses those in names).

Ids that cannot be used at all (`id_problem`) are quarantined by validation with the
reason: empty or only whitespace, control characters (a newline or NUL in an id breaks
logs, CSV and Markdown reports), invisible format characters such as a byte-order mark,
zero-width space or right-to-left override (they make two different ids look identical
to a reviewer; the zero-width joiners U+200C/U+200D that some scripts need are allowed),
unpaired surrogates (not text), and more than `MAX_ID_CHARS` characters.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

HASH_CHARS = 10
SLUG_CHARS = 40
MAX_PLAIN_CHARS = 64
MAX_ID_CHARS = 1000
SEPARATOR = "--"
_PLAIN = re.compile(rf"[a-z0-9](?:[a-z0-9._-]{{0,{MAX_PLAIN_CHARS - 2}}}[a-z0-9])?")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_ALLOWED_FORMAT = {"\u200c", "\u200d"}  # zero-width non-joiner / joiner (Persian, Indic)


def is_plain(athlete_id: str) -> bool:
    """Whether an id is its own storage key (see the module docstring)."""
    return (_PLAIN.fullmatch(athlete_id) is not None and SEPARATOR not in athlete_id
            and ".." not in athlete_id)


def id_hash(athlete_id: str) -> str:
    """First `HASH_CHARS` hex digits of SHA-256 over the exact id (UTF-8)."""
    data = athlete_id.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def slug(athlete_id: str) -> str:
    """The readable part of a hashed key: lowercase ASCII letters, digits and single ``-``."""
    folded = unicodedata.normalize("NFKD", athlete_id).encode("ascii", "ignore").decode()
    text = _NOT_SLUG.sub("-", folded.lower()).strip("-")[:SLUG_CHARS].rstrip("-")
    return text or "id"


def athlete_key(athlete_id: str) -> str:
    """The safe, collision-free storage key of an athlete id (path component, name part).

    Raises:
        TypeError: if the id is not a string.
    """
    if not isinstance(athlete_id, str):
        raise TypeError(f"athlete id must be a string, got {type(athlete_id).__name__}")
    if is_plain(athlete_id):
        return athlete_id
    return f"{slug(athlete_id)}{SEPARATOR}{id_hash(athlete_id)}"


def id_problem(athlete_id: object) -> str | None:
    """Why an id cannot be used at all (a sentence), or None when it can."""
    if not isinstance(athlete_id, str):
        return f"athlete id {athlete_id!r} is not text"
    if not athlete_id.strip():
        return f"athlete id {athlete_id!r} is empty or only whitespace"
    if len(athlete_id) > MAX_ID_CHARS:
        return f"athlete id is {len(athlete_id)} characters long (at most {MAX_ID_CHARS})"
    for pos, ch in enumerate(athlete_id):
        cat = unicodedata.category(ch)
        if cat == "Cc":
            return f"athlete id contains control character U+{ord(ch):04X} at position {pos}"
        if cat == "Cs":
            return f"athlete id contains unpaired surrogate U+{ord(ch):04X} at position {pos}"
        if cat == "Cf" and ch not in _ALLOWED_FORMAT:
            return (f"athlete id contains invisible format character U+{ord(ch):04X} "
                    f"({unicodedata.name(ch, 'unnamed')}) at position {pos}")
    return None


def key_collisions(athlete_ids: Iterable[str]) -> dict[str, list[str]]:
    """Ids whose keys clash with another id's key: id -> the other ids (sorted).

    A plain id never clashes (see the module docstring); two hashed ids clash only when
    their 40-bit hashes and slugs agree.
    """
    by_key: dict[str, set[str]] = {}
    for aid in athlete_ids:
        by_key.setdefault(athlete_key(aid), set()).add(aid)
    return {aid: sorted(group - {aid}) for group in by_key.values() if len(group) > 1
            for aid in group}
