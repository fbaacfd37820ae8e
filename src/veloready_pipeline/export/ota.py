"""Signed over-the-air (OTA) manifests: what the app may download, and proof of origin.

Layout under the OTA root (``settings.paths.ota_dir``; the app's base URL maps onto it)::

    <root>/<athlete>/manifest.json                 canonical JSON, the signed bytes
    <root>/<athlete>/manifest.json.sig             {"algorithm", "key_id", "public_key",
                                                    "signature", "manifest_sha256"}
    <root>/<athlete>/<family>/<version>/<file>     model files the manifest lists

``<athlete>`` is the athlete id's storage key (`veloready_pipeline.ids.athlete_key`: the
id itself when plain, else a slug plus a hash of the exact id); the manifest's
``athlete_id`` holds the exact id.

Each model entry's ``file`` is relative to the OTA root. A Core ML package is a
directory, which cannot be downloaded as one object, so it is shipped as a
deterministic zip (``<name>.mlpackage.zip``: sorted entries, fixed timestamps); the entry
keeps ``package_sha256``, the directory digest of the exported package
(`veloready_pipeline.export.digest_path`), which verification also recomputes from
inside the zip. Single files (``.mlmodel``, ``.onnx``) are copied as they are.

Signing: Ed25519 over the exact bytes of ``manifest.json``, which are canonical JSON
(``sort_keys``, no whitespace) so a verifier never has to re-serialise anything. The
key id is the first 16 hex digits of SHA-256 of the raw 32-byte public key.

Writes are atomic (temporary file + ``os.replace``) and idempotent: rewriting the same
content leaves every byte as it was (an unchanged entry keeps its ``created_at``, and
Ed25519 signatures are deterministic). A per-athlete lock file serialises concurrent
writers. The manifest and its signature are two files replaced one after the other;
a reader that catches the instant between them sees a signature mismatch and should
re-fetch.

Identity and freshness: every manifest names its ``athlete_id`` (whose key is the folder),
a ``sequence`` that grows with every re-signing of that athlete's manifest, its
``issued_at`` and its ``expires_at`` (``issued_at`` + the validity, 30 days by default).
The publisher keeps the last sequence it issued per athlete outside the served folder
(`issued_record_dir`: ``<root>.issued/<athlete>.json``), so a deleted or replayed
manifest in the folder never makes it issue a lower number. Re-publishing unchanged
content keeps the signed bytes (and the sequence) as they are until half the validity
has passed; then the manifest is renewed with the next sequence. Files in an athlete's
folder that the manifest does not list are removed when it is written.

`verify_tree` checks what the app checks (signature with the trusted key, athlete =
folder, sequence not below the last accepted or issued one, not expired, every file's
size and hashes) and also reports files no manifest lists and athletes whose manifest
is gone; the sequences it accepts are recorded in a state file
(`accepted_state_path`: ``<root>.accepted.json`` by default).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from veloready_pipeline.export import ExportedArtifact, digest_path, size_path
from veloready_pipeline.fsio import atomic_write_bytes, atomic_write_with

__all__ = [
    "DEFAULT_VALIDITY_DAYS",
    "MANIFEST_NAME",
    "OTAStateError",
    "OTAVerificationError",
    "SIGNATURE_NAME",
    "TreeReport",
    "VerifyReport",
    "accepted_state_path",
    "ensure_signing_key",
    "issued_record_dir",
    "key_id",
    "load_public_key",
    "public_key_path",
    "renewal_due",
    "verify_manifest",
    "verify_path",
    "verify_tree",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
LOCK_NAME = ".manifest.lock"
SCHEMA_VERSION = 1
DEFAULT_VALIDITY_DAYS = 30.0
# How far in the future an ``issued_at`` may lie before it is refused (clock skew).
CLOCK_SKEW = dt.timedelta(minutes=10)
# Top-level fields the writer sets on every signing; ``extra`` may not set them.
_FRESHNESS = ("sequence", "issued_at", "expires_at")
_ALGORITHM = "Ed25519"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_REQUIRED = ("family", "registry_name", "registry_version", "variant")
# Keys the writer computes; an entry may not set them.
_COMPUTED = ("file", "sha256", "size_bytes", "package_sha256", "format")


class OTAVerificationError(RuntimeError):
    """A manifest's signature, identity, freshness or a file it lists does not check out."""


class OTAStateError(ValueError):
    """A sequence state file (issued or accepted) cannot be read or is malformed."""


@dataclass
class VerifyReport:
    """What `verify_manifest` checked (everything in it passed)."""

    manifest: Path
    athlete_id: str
    key_id: str
    key_source: str  # "given" (trusted key) or "embedded" (integrity only)
    files: list[dict[str, Any]] = field(default_factory=list)
    folder: str = ""  # the athlete's folder (`ids.athlete_key` of athlete_id)
    sequence: int = 0
    issued_at: str = ""
    expires_at: str = ""
    manifest_sha256: str = ""

    @property
    def n_files(self) -> int:
        return len(self.files)


@dataclass
class TreeReport:
    """What `verify_tree` found: the manifests that passed and every problem, by athlete."""

    root: Path
    reports: list[VerifyReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    state_path: Path | None = None
    recorded: list[str] = field(default_factory=list)  # athletes whose sequence was recorded

    @property
    def ok(self) -> bool:
        return not self.problems


# ----------------------------------------------------------------------------- keys


def public_key_path(key_path: Path) -> Path:
    """Where the public half of a signing key is written (``<stem>.pub.pem``)."""
    key_path = Path(key_path)
    return key_path.with_name(f"{key_path.stem}.pub.pem")


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def ensure_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 signing key at ``path``, creating it (mode 0600) on first use.

    Creation is race-free: the key is written to a private temporary file and linked
    into place, which fails if another process got there first (its key is then used).
    The public key is written next to it (`public_key_path`) for the app and verifiers.
    Keys live under ``data/`` by default, which git ignores; never commit them.

    Raises:
        ValueError: if the file exists but is not an unencrypted Ed25519 PEM key.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.fsync(fd)
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"signing key {path}: not an unencrypted PEM private key ({exc})"
                         ) from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"signing key {path}: expected Ed25519, got {type(loaded).__name__}")
    key = loaded
    pub_path = public_key_path(path)
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    if not pub_path.exists() or pub_path.read_bytes() != pub_pem:
        _atomic_write(pub_path, pub_pem)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file holding either half of the key pair."""
    data = Path(path).read_bytes()
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


# ----------------------------------------------------------------------------- writing


def _atomic_write(path: Path, data: bytes) -> None:
    """Public files (manifests, signatures, keys' public halves, records): readable by
    the server that hands them to phones."""
    atomic_write_bytes(path, data, mode=0o644)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _utc_now() -> str:
    return _iso(_now())


def _now() -> dt.datetime:
    """The current UTC time, whole seconds (one place, so tests can move the clock)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> dt.datetime | None:
    """A UTC ISO timestamp (``...Z`` or with an offset), or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _valid_sequence(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 \
        else None


# ----------------------------------------------------------------------------- sequence state


def issued_record_dir(root: Path) -> Path:
    """The publisher's record of the last sequence issued per athlete.

    ``<root>.issued/<athlete folder>.json`` next to (never inside) the served OTA root, e.g.
    ``data/ota.issued/`` for ``data/ota``: the app never sees it.
    """
    root = Path(root)
    return root.parent / f"{root.name}.issued"


def accepted_state_path(root: Path) -> Path:
    """`verify_tree`'s default state file: the last sequence accepted per athlete.

    ``<root>.accepted.json`` next to the OTA root, e.g. ``data/ota.accepted.json``; the
    pipeline-side mirror of what each phone keeps.
    """
    root = Path(root)
    return root.parent / f"{root.name}.accepted.json"


def _read_json_state(path: Path, what: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OTAStateError(f"{what} {path}: unreadable ({exc}); fix or remove it") from exc
    if not isinstance(data, dict):
        raise OTAStateError(f"{what} {path}: expected a JSON object")
    return data


def _read_issued(root: Path, folder: str) -> dict[str, Any]:
    rec = _read_json_state(issued_record_dir(root) / f"{folder}.json", "issued record")
    if rec is None:
        return {}
    if _valid_sequence(rec.get("sequence")) is None:
        raise OTAStateError(f"issued record {issued_record_dir(root) / folder}.json: "
                            f"'sequence' must be an integer >= 1, got {rec.get('sequence')!r}")
    return rec


def _issued_records(root: Path) -> dict[str, dict[str, Any]]:
    folder = issued_record_dir(root)
    if not folder.is_dir():
        return {}
    return {p.stem: _read_issued(root, p.stem) for p in sorted(folder.glob("*.json"))}


def _write_issued(root: Path, folder: str, record: dict[str, Any]) -> None:
    path = issued_record_dir(root) / f"{folder}.json"
    _atomic_write(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def renewal_due(root: Path, validity_days: float, now: dt.datetime | None = None
                ) -> list[str]:
    """Exact ids of athletes whose last issued manifest is at least half its validity old.

    Read from the publisher's issued records only (no registry, no manifest), so a
    publish stage can renew every champion's manifest before it expires, including
    athletes its run did not train.
    """
    now = (now or _now()).astimezone(dt.UTC)
    due = []
    for rec in _issued_records(Path(root)).values():
        issued = _parse_time(rec.get("issued_at"))
        if issued is None or now >= issued + dt.timedelta(days=validity_days) / 2:
            if isinstance(rec.get("athlete_id"), str):
                due.append(rec["athlete_id"])
    return sorted(due)


def _state_record(report: VerifyReport) -> dict[str, Any]:
    return {"athlete_id": report.athlete_id, "sequence": report.sequence,
            "manifest_sha256": report.manifest_sha256,
            "issued_at": report.issued_at, "expires_at": report.expires_at,
            "key_id": report.key_id}


def _read_accepted(path: Path) -> dict[str, dict[str, Any]]:
    data = _read_json_state(path, "verify state")
    if data is None:
        return {}
    athletes = data.get("athletes")
    if not isinstance(athletes, dict) or not all(
            isinstance(r, dict) and _valid_sequence(r.get("sequence")) is not None
            for r in athletes.values()):
        raise OTAStateError(f"verify state {path}: expected {{\"athletes\": {{id: "
                            "{\"sequence\": n >= 1, ...}}}}; fix or remove it")
    return athletes


def _check_safe(athlete_id: str, what: str, value: str) -> str:
    if not _SAFE.match(value):
        raise ValueError(f"athlete {athlete_id}: {what} {value!r} is not a safe path "
                         "component (letters, digits, '.', '_', '-'; max 128)")
    return value


def _zip_package(package: Path, dest: Path) -> None:
    """A deterministic zip of a package directory: sorted entries, fixed timestamps."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for rel in sorted(p.relative_to(package).as_posix() for p in package.rglob("*")
                          if p.is_file()):
            info = zipfile.ZipInfo(f"{package.name}/{rel}", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, (package / rel).read_bytes())


def _zip_package_digest(path: Path) -> str:
    """`digest_path` of the package inside a shipped zip, computed from the zip."""
    h = hashlib.sha256()
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise OTAVerificationError(f"{path.name}: zip must hold exactly one package folder")
        for name in sorted(names, key=lambda n: n.split("/", 1)[1]):
            data = zf.read(name)
            rel = name.split("/", 1)[1]
            h.update(rel.encode("utf-8") + b"\0" + len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()


def _publish_file(source: Path, dest: Path) -> None:
    """Place ``source`` (file, or package directory -> zip) at ``dest`` atomically.

    The new bytes are staged next to ``dest``; if ``dest`` already holds identical
    bytes nothing is replaced (idempotent re-publication).
    """
    def write(tmp: Path) -> None:
        if source.is_dir():
            _zip_package(source, tmp)
        else:
            shutil.copyfile(source, tmp)

    atomic_write_with(dest, write, mode=0o644, keep_if_identical=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a") as fh:  # "a": taking the lock changes no mtime
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _normalise_entry(athlete_id: str, raw: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Validate one caller entry; return (source path, entry fields without computed ones)."""
    entry = dict(raw)
    artifact = entry.pop("artifact", None)
    if artifact is not None:
        if not isinstance(artifact, ExportedArtifact):
            raise ValueError(f"athlete {athlete_id}: 'artifact' must be an ExportedArtifact")
        entry.setdefault("path", artifact.path)
        entry.setdefault("kind", artifact.kind)
        entry.setdefault("variant", artifact.variant)
        for key in ("input_names", "input_shapes", "output_names", "output_shapes"):
            entry.setdefault(key, getattr(artifact, key))
    if "quantization" in entry and "variant" not in entry:
        entry["variant"] = entry["quantization"]
    missing = [k for k in (*_REQUIRED, "path") if entry.get(k) in (None, "")]
    if missing:
        raise ValueError(f"athlete {athlete_id}: manifest entry {raw.get('family', '?')!r} "
                         f"lacks {missing}")
    bad = [k for k in _COMPUTED if k in entry]
    if bad:
        raise ValueError(f"athlete {athlete_id}: manifest entry sets computed fields {bad}")
    for key in ("input_names", "input_shapes", "output_names", "output_shapes"):
        if key not in entry:
            raise ValueError(f"athlete {athlete_id}: manifest entry {entry['family']!r} lacks "
                             f"{key!r} (pass it or an ExportedArtifact as 'artifact')")
    source = Path(entry.pop("path"))
    if not source.exists():
        raise ValueError(f"athlete {athlete_id}: model file {source} does not exist")
    entry["family"] = _check_safe(athlete_id, "family", str(entry["family"]))
    entry["registry_version"] = _check_safe(athlete_id, "registry_version",
                                            str(entry["registry_version"]))
    entry["variant"] = str(entry["variant"])
    entry.setdefault("quantization", "none" if entry["variant"] == "float32"
                     else entry["variant"])
    entry.setdefault("kind", "coreml" if source.suffix in (".mlpackage", ".mlmodel")
                     else source.suffix.lstrip("."))
    entry["input_shapes"] = [[int(d) for d in s] for s in entry["input_shapes"]]
    entry["output_shapes"] = [[int(d) for d in s] for s in entry["output_shapes"]]
    entry["input_names"] = [str(n) for n in entry["input_names"]]
    entry["output_names"] = [str(n) for n in entry["output_names"]]
    try:
        _canonical(entry)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"athlete {athlete_id}: manifest entry {entry['family']!r} is not "
                         f"JSON-serialisable: {exc}") from exc
    return source, entry


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _entry_key(entry: dict[str, Any]) -> tuple[str, str, str, str]:
    return (entry["family"], entry["registry_version"], entry["variant"], entry["kind"])


def _signature_doc(key: Ed25519PrivateKey, body: bytes) -> bytes:
    pub = key.public_key()
    return _canonical({
        "algorithm": _ALGORITHM,
        "key_id": key_id(pub),
        "public_key": base64.b64encode(_raw_public(pub)).decode("ascii"),
        "signature": base64.b64encode(key.sign(body)).decode("ascii"),
        "manifest_sha256": hashlib.sha256(body).hexdigest(),
    })


def _expires(issued: dt.datetime, validity_days: float) -> dt.datetime:
    return (issued + dt.timedelta(days=validity_days)).replace(microsecond=0)


def _keep_previous(previous: dict[str, Any], content: dict[str, Any], issued_seq: int,
                   validity_days: float, now: dt.datetime) -> bool:
    """Whether the folder's manifest (already known to carry our signature) can stay.

    It stays when its content is the same, it is the last one issued, it was signed
    with the current validity and less than half of that validity has passed.
    """
    seq = _valid_sequence(previous.get("sequence"))
    issued = _parse_time(previous.get("issued_at"))
    if seq is None or issued is None or seq < issued_seq:
        return False
    if {k: v for k, v in previous.items() if k not in _FRESHNESS} != content:
        return False
    if previous.get("expires_at") != _iso(_expires(issued, validity_days)):
        return False
    return now < issued + dt.timedelta(days=validity_days) / 2


def _prune_unlisted(athlete_dir: Path, listed: set[str], root: Path) -> None:
    """Remove files in an athlete's folder that its manifest does not list."""
    keep = {athlete_dir / MANIFEST_NAME, athlete_dir / SIGNATURE_NAME, athlete_dir / LOCK_NAME}
    keep |= {root / rel for rel in listed}
    for path in sorted(athlete_dir.rglob("*"), reverse=True):
        if path.is_symlink() or path.is_file():
            if path not in keep:
                path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _check_write_args(athlete_id: str, entries: list[dict[str, Any]], merge: bool,
                      validity_days: float, extra: dict[str, Any] | None) -> None:
    """Raise ValueError (naming the athlete) for arguments `write_manifest` refuses."""
    if not entries and not merge:
        raise ValueError(f"athlete {athlete_id}: no model entries to publish")
    if not validity_days > 0:
        raise ValueError(f"athlete {athlete_id}: validity_days must be > 0, got {validity_days}")
    clash = sorted(set(extra or {}) & {*_FRESHNESS, "athlete_id", "schema_version"})
    if clash:
        raise ValueError(f"athlete {athlete_id}: extra fields {clash} are set by the writer")


def _publish_entries(out_dir: Path, folder: str, athlete_id: str,
                     normalised: list[tuple[Path, dict[str, Any]]],
                     old_models: dict[Any, dict[str, Any]],
                     now: dt.datetime) -> list[dict[str, Any]]:
    """Copy each entry's file into the athlete's folder; its manifest entry, completed."""
    models: list[dict[str, Any]] = []
    seen_files: set[str] = set()
    for source, entry in normalised:
        name = f"{source.name}.zip" if source.is_dir() else source.name
        rel = f"{folder}/{entry['family']}/{entry['registry_version']}/{name}"
        if rel in seen_files:
            raise ValueError(f"athlete {athlete_id}: two entries publish {rel}")
        seen_files.add(rel)
        dest = out_dir / rel
        _publish_file(source, dest)
        entry["file"] = rel
        entry["sha256"] = digest_path(dest)
        entry["size_bytes"] = size_path(dest)
        entry["format"] = ("mlpackage.zip" if source.is_dir()
                           else source.suffix.lstrip(".") or "bin")
        if source.is_dir():
            entry["package_sha256"] = digest_path(source)
        old = old_models.get(_entry_key(entry))
        if "created_at" not in entry:
            same = old is not None and old.get("sha256") == entry["sha256"]
            entry["created_at"] = (old["created_at"]
                                   if old is not None and same and "created_at" in old
                                   else _iso(now))
        models.append(entry)
    return models


def write_manifest(out_dir: Path, athlete_id: str, entries: list[dict[str, Any]],
                   key_path: Path, *, minimum_ios: str, extra: dict[str, Any] | None = None,
                   merge: bool = False, validity_days: float = DEFAULT_VALIDITY_DAYS,
                   now: dt.datetime | None = None) -> Path:
    """Publish an athlete's models and their signed manifest; return the manifest path.

    Args:
        out_dir: the OTA root.
        athlete_id: the exact id (in the manifest); its folder is `ids.athlete_key`.
        entries: one dict per model file with ``family``, ``registry_name``,
            ``registry_version``, ``variant`` (or ``quantization``) and either ``path``
            plus ``input_names/input_shapes/output_names/output_shapes``, or
            ``artifact`` (an `ExportedArtifact`, which supplies those). Optional:
            ``created_at`` (UTC ISO; default: kept from an identical earlier entry,
            else now) and any JSON-serialisable extras (metrics, gate verdict, ...).
        key_path: Ed25519 private key (PEM), created on first use.
        minimum_ios: the lowest iOS version the listed models need, e.g. ``"17.0"``.
        extra: top-level fields added to the manifest (e.g. run id, data window); not
            ``sequence``, ``issued_at`` or ``expires_at``, which the writer sets.
        merge: keep entries of families that ``entries`` does not mention (for flows
            that publish one family at a time); default replaces the whole list.
        validity_days: ``expires_at`` = ``issued_at`` + this many days.
        now: the signing time (default: the clock); for tests and backfills.

    The new manifest gets the next sequence after both the folder's manifest (when it
    carries this key's signature) and the publisher's issued record
    (`issued_record_dir`). Unchanged content is not re-signed (no file is touched)
    until half of ``validity_days`` has passed.

    Raises:
        ValueError: naming the athlete and the field, for bad entries.
        OTAStateError: if the athlete's issued record is unreadable.
    """
    from veloready_pipeline.ids import athlete_key, id_problem

    out_dir = Path(out_dir)
    problem = id_problem(athlete_id)
    if problem:
        raise ValueError(f"athlete {athlete_id!r}: {problem}")
    folder = athlete_key(athlete_id)  # the exact id stays in the manifest
    _check_write_args(athlete_id, entries, merge, validity_days, extra)
    normalised = [_normalise_entry(athlete_id, e) for e in entries]
    key = ensure_signing_key(key_path)
    now = (now or _now()).astimezone(dt.UTC).replace(microsecond=0)
    athlete_dir = out_dir / folder
    manifest_path = athlete_dir / MANIFEST_NAME
    sig_path = athlete_dir / SIGNATURE_NAME
    with _locked(athlete_dir):
        prev_body = manifest_path.read_bytes() if manifest_path.is_file() else None
        previous = _read_manifest(manifest_path) or {}
        # The folder's manifest counts (for its sequence, or to stay as it is) only if
        # it carries exactly our signature: the folder is served, so anyone who can
        # write there could have put an old or a forged manifest in it.
        ours = (prev_body is not None and isinstance(previous, dict) and sig_path.is_file()
                and sig_path.read_bytes() == _signature_doc(key, prev_body))
        if not isinstance(previous, dict):
            previous = {}
        old_models = {(_entry_key(m)): m for m in previous.get("models", [])
                      if isinstance(m, dict) and all(k in m for k in
                                                     ("family", "registry_version",
                                                      "variant", "kind"))}
        models = _publish_entries(out_dir, folder, athlete_id, normalised, old_models, now)
        if merge:
            families = {m["family"] for m in models}
            models += [m for k, m in old_models.items() if k[0] not in families]
        models.sort(key=lambda m: (m["family"], m["kind"], m["variant"], m["file"]))
        content: dict[str, Any] = {
            **(extra or {}),
            "schema_version": SCHEMA_VERSION,
            "athlete_id": athlete_id,
            "minimum_ios": str(minimum_ios),
            "models": models,
        }
        issued = _read_issued(out_dir, folder)
        issued_seq = int(issued.get("sequence", 0))
        prev_seq = (_valid_sequence(previous.get("sequence")) or 0) if ours else 0
        if ours and _keep_previous(previous, content, issued_seq, validity_days, now):
            assert prev_body is not None
            body, sequence = prev_body, prev_seq
        else:
            sequence = max(prev_seq, issued_seq) + 1
            body = _canonical({**content, "sequence": sequence, "issued_at": _iso(now),
                               "expires_at": _iso(_expires(now, validity_days))})
        sha = hashlib.sha256(body).hexdigest()
        if (issued_seq, issued.get("manifest_sha256")) != (sequence, sha):
            # Recorded before the files change: a crash in between leaves a gap in the
            # sequence (harmless), never a number issued twice.
            written = json.loads(body)
            _write_issued(out_dir, folder, {
                "athlete_id": athlete_id, "sequence": sequence, "manifest_sha256": sha,
                "issued_at": written["issued_at"], "expires_at": written["expires_at"]})
        sig_doc = _signature_doc(key, body)
        unchanged = (prev_body == body and sig_path.is_file()
                     and sig_path.read_bytes() == sig_doc)
        if not unchanged:
            _atomic_write(manifest_path, body)
            _atomic_write(sig_path, sig_doc)
        _prune_unlisted(athlete_dir, {m["file"] for m in models}, out_dir)
    return manifest_path


# ----------------------------------------------------------------------------- verifying


def verify_manifest(path: Path, public_key: Ed25519PublicKey | None = None, *,
                    now: dt.datetime | None = None) -> VerifyReport:
    """Check one manifest as the app does: signature, athlete, expiry, every listed file.

    Checks, in order: the Ed25519 signature over the exact bytes; ``athlete_id`` maps
    (`ids.athlete_key`) to the folder the manifest sits in; ``sequence`` is an integer
    >= 1; ``issued_at`` is not in the future (beyond `CLOCK_SKEW`) and ``expires_at`` has
    not passed; every listed file lies inside the athlete's folder and matches its
    size, SHA-256 and (for a zipped Core ML package) package digest. The sequence is
    compared with what was accepted before by `verify_tree`, which holds that state.

    Args:
        path: a ``manifest.json``.
        public_key: the trusted key. Without it the public key embedded in the signature
            file is used: that proves integrity (nothing changed since signing) but not
            origin, since anyone can embed their own key; pass the key (see
            `load_public_key`) to prove origin too.
        now: the time to judge expiry at (default: the clock).

    Raises:
        OTAVerificationError: naming the manifest or the file and what did not match.
    """
    path = Path(path)
    root = path.parent.parent
    where = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    body, sig_doc, source = _verify_signature(path, where, public_key)
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise OTAVerificationError(f"{where}: signed bytes are not JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise OTAVerificationError(f"{where}: signed bytes are not a JSON object")
    from veloready_pipeline.ids import athlete_key

    folder = path.parent.name
    named = manifest.get("athlete_id")
    if not isinstance(named, str) or athlete_key(named) != folder:
        raise OTAVerificationError(
            f"{where}: names athlete {named!r} but sits in the folder of athlete {folder!r} "
            "(another athlete's manifest: refused)")
    sequence = _check_freshness(manifest, where, now)
    report = VerifyReport(manifest=path, athlete_id=named, folder=folder,
                          key_id=sig_doc["key_id"],
                          key_source=source, sequence=sequence,
                          issued_at=str(manifest["issued_at"]),
                          expires_at=str(manifest["expires_at"]),
                          manifest_sha256=hashlib.sha256(body).hexdigest())
    own = (root / folder).resolve()
    for entry in manifest.get("models", []):
        report.files.append(_verify_listed_file(entry, root, own, folder, where))
    return report


def _verify_signature(path: Path, where: str, public_key: Ed25519PublicKey | None,
                      ) -> tuple[bytes, dict[str, Any], str]:
    """The manifest's bytes, its signature document and the key's source (given/embedded).

    Raises OTAVerificationError unless the signature file is readable, of our algorithm,
    its key id matches its key (and the given key) and the signature matches the bytes.
    """
    sig_path = path.with_name(SIGNATURE_NAME)
    try:
        body = path.read_bytes()
        sig_doc = json.loads(sig_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OTAVerificationError(f"{where}: missing {Path(exc.filename).name}") from exc
    except ValueError as exc:
        raise OTAVerificationError(f"{where}: unreadable signature file ({exc})") from exc
    if not isinstance(sig_doc, dict) or sig_doc.get("algorithm") != _ALGORITHM:
        algorithm = sig_doc.get("algorithm") if isinstance(sig_doc, dict) else None
        raise OTAVerificationError(f"{where}: unsupported algorithm {algorithm!r}")
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig_doc["public_key"]))
        signature = base64.b64decode(sig_doc["signature"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OTAVerificationError(f"{where}: malformed signature file ({exc})") from exc
    if key_id(embedded) != sig_doc.get("key_id"):
        raise OTAVerificationError(f"{where}: key id {sig_doc.get('key_id')} does not match "
                                   "the embedded public key")
    verifier, source = (public_key, "given") if public_key is not None else (embedded,
                                                                              "embedded")
    if key_id(verifier) != sig_doc["key_id"]:
        raise OTAVerificationError(f"{where}: signed by key {sig_doc['key_id']}, expected "
                                   f"{key_id(verifier)}")
    try:
        verifier.verify(signature, body)
    except InvalidSignature as exc:
        raise OTAVerificationError(f"{where}: Ed25519 signature does not match the manifest "
                                   "bytes (manifest or signature tampered with)") from exc
    return body, sig_doc, source


def _check_freshness(manifest: dict[str, Any], where: str, now: dt.datetime | None) -> int:
    """The manifest's sequence; raises unless it is valid, issued and not expired."""
    sequence = _valid_sequence(manifest.get("sequence"))
    issued, expires = (_parse_time(manifest.get(k)) for k in ("issued_at", "expires_at"))
    if sequence is None or issued is None or expires is None:
        raise OTAVerificationError(
            f"{where}: lacks a valid sequence (integer >= 1), issued_at or expires_at "
            f"(got {manifest.get('sequence')!r}, {manifest.get('issued_at')!r}, "
            f"{manifest.get('expires_at')!r}); re-publish it")
    now = (now or _now()).astimezone(dt.UTC)
    if issued > now + CLOCK_SKEW:
        raise OTAVerificationError(f"{where}: issued_at {manifest['issued_at']} lies in the "
                                   f"future (now {_iso(now)}): refused")
    if now >= expires:
        age = (now - expires).total_seconds() / 86400
        raise OTAVerificationError(f"{where}: expired at {manifest['expires_at']} "
                                   f"({age:.1f} days ago; sequence {sequence}): refused")
    return sequence


def _verify_listed_file(entry: object, root: Path, own: Path, folder: str,
                        where: str) -> dict[str, Any]:
    """One listed file: inside the athlete's folder, present, of the listed size and digests."""
    rel = str(entry.get("file", "")) if isinstance(entry, dict) else ""
    target = (root / rel).resolve()
    if not isinstance(entry, dict) or not rel or not target.is_relative_to(own):
        family = entry.get("family") if isinstance(entry, dict) else None
        raise OTAVerificationError(f"{where}: entry {family!r} has a file path {rel!r} "
                                   f"outside the athlete's folder {folder}/")
    if not target.is_file():
        raise OTAVerificationError(f"{rel}: listed in {where} but missing")
    size = size_path(target)
    if size != entry.get("size_bytes"):
        raise OTAVerificationError(f"{rel}: size mismatch (manifest "
                                   f"{entry.get('size_bytes')} bytes, file {size} bytes)")
    digest = digest_path(target)
    if digest != entry.get("sha256"):
        raise OTAVerificationError(f"{rel}: sha256 mismatch (manifest "
                                   f"{entry.get('sha256')}, file {digest})")
    if "package_sha256" in entry:
        try:
            inner = _zip_package_digest(target)
        except zipfile.BadZipFile as exc:
            raise OTAVerificationError(f"{rel}: not a valid zip ({exc})") from exc
        if inner != entry["package_sha256"]:
            raise OTAVerificationError(f"{rel}: package digest mismatch (manifest "
                                       f"{entry['package_sha256']}, zip holds {inner})")
    return {"file": rel, "sha256": digest, "size_bytes": size}


def _unlisted(root: Path, athlete_dir: Path, listed: set[str]) -> list[str]:
    """Files under an athlete's folder that its manifest does not list (relative)."""
    fixed = {MANIFEST_NAME, SIGNATURE_NAME, LOCK_NAME}
    out = []
    for p in sorted(athlete_dir.rglob("*")):
        if p.is_dir() and not p.is_symlink():
            continue
        rel = p.relative_to(root).as_posix()
        if p.parent == athlete_dir and p.name in fixed:
            continue
        if rel not in listed:
            out.append(rel)
    return out


def _sequence_problems(rep: VerifyReport, accepted: dict[str, Any] | None,
                       issued: dict[str, Any] | None) -> list[str]:
    """At most one problem: the accepted state is judged first, then the issued record."""
    where = f"{rep.folder}/{MANIFEST_NAME}"
    out: list[str] = []
    for what, rec in (("accepted", accepted), ("issued", issued)):
        if out:
            break
        if not rec:
            continue
        last = int(rec["sequence"])
        if rep.sequence < last:
            out.append(f"{where}: sequence {rep.sequence} is older than the last {what} "
                       f"sequence {last} (replayed or rolled-back manifest): refused")
        elif rep.sequence == last and rec.get("manifest_sha256") not in (
                None, rep.manifest_sha256):
            out.append(f"{where}: sequence {rep.sequence} was {what} before with other "
                       f"content (sha256 {rec.get('manifest_sha256')}): refused")
    return out


def verify_tree(path: Path, public_key: Ed25519PublicKey | None = None, *,
                state_path: Path | None = None, record: bool = True,
                now: dt.datetime | None = None) -> TreeReport:
    """Verify an OTA root (every athlete folder), one athlete folder or one manifest.

    Per athlete: `verify_manifest`, then the sequence against the last accepted one
    (``state_path``) and the publisher's last issued one (`issued_record_dir`, when it
    exists next to the root), then files in the folder that the manifest does not list.
    For a whole root also: athletes known to the state or the issued record whose
    manifest is gone, and stray files at the top.

    Args:
        path: an OTA root, an athlete folder or a ``manifest.json``.
        public_key: the trusted key; None checks integrity only (see `verify_manifest`),
            and then nothing is recorded.
        state_path: the last-accepted-sequence file (`accepted_state_path` in the CLI);
            None skips the accepted-sequence check.
        record: write each athlete that passed (with a trusted key) to ``state_path``.
        now: the time to judge expiry at.

    Raises:
        OTAVerificationError: if ``path`` does not exist or a root holds no manifest.
        OTAStateError: if a state file is unreadable.
    """
    path = Path(path)
    if path.is_file():
        root, folders, whole = path.parent.parent, [path.parent], False
        manifests = {path.parent.name: path}
    elif path.is_dir() and (path / MANIFEST_NAME).is_file():
        root, folders, whole = path.parent, [path], False
        manifests = {path.name: path / MANIFEST_NAME}
    elif path.is_dir():
        root, whole = path, True
        folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
        manifests = {p.name: p / MANIFEST_NAME for p in folders}
    else:
        raise OTAVerificationError(f"{path}: no such file or folder")
    accepted = _read_accepted(state_path) if state_path is not None else {}
    issued = _issued_records(root)
    out = TreeReport(root=root, state_path=state_path)
    if whole:
        if not any(m.is_file() for m in manifests.values()) and not accepted and not issued:
            raise OTAVerificationError(f"{path}: no {MANIFEST_NAME} found")
        out.problems += [f"{p.name}: stray file at the top of the OTA root (not listed in "
                         "any manifest)" for p in sorted(root.iterdir())
                         if not p.is_dir() or p.is_symlink()]
        for aid in sorted((set(accepted) | set(issued)) - set(manifests)):
            last = accepted.get(aid) or issued.get(aid) or {}
            out.problems.append(f"{aid}/{MANIFEST_NAME}: missing (athlete {aid} had "
                                f"sequence {last.get('sequence')}; its folder is gone)")
    passed: dict[str, VerifyReport] = {}
    for folder in folders:
        aid, manifest = folder.name, manifests[folder.name]
        if not manifest.is_file():
            prior = accepted.get(aid) or issued.get(aid)
            had = f" (athlete {aid} had sequence {prior['sequence']})" if prior else ""
            out.problems.append(f"{aid}/{MANIFEST_NAME}: missing{had}")
            out.problems += [f"{rel}: not listed in any manifest"
                             for rel in _unlisted(root, folder, set())]
            continue
        problems: list[str] = []
        listed: set[str] = set()
        try:
            rep = verify_manifest(manifest, public_key, now=now)
        except OTAVerificationError as exc:
            problems.append(str(exc))
            body = _read_manifest(manifest)
            models = body.get("models", []) if isinstance(body, dict) else []
            listed = {str(m.get("file")) for m in models if isinstance(m, dict)}
        else:
            listed = {f["file"] for f in rep.files}
            problems += _sequence_problems(rep, accepted.get(aid), issued.get(aid))
        problems += [f"{rel}: not listed in {aid}/{MANIFEST_NAME}"
                     for rel in _unlisted(root, folder, listed)]
        if problems:
            out.problems += problems
        else:
            out.reports.append(rep)
            passed[aid] = rep
    if record and state_path is not None and public_key is not None and passed:
        _record_accepted(state_path, passed)
        out.recorded = sorted(passed)
    return out


def _record_accepted(state_path: Path, passed: dict[str, VerifyReport]) -> None:
    state_path = Path(state_path)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    with open(state_path.with_name(f".{state_path.name}.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        athletes = _read_accepted(state_path)
        for aid, rep in passed.items():
            if int(athletes.get(aid, {}).get("sequence", 0)) <= rep.sequence:
                athletes[aid] = _state_record(rep)
        doc = {"schema_version": 1, "athletes": dict(sorted(athletes.items()))}
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        if not state_path.is_file() or state_path.read_bytes() != data:
            _atomic_write(state_path, data)


def verify_path(path: Path, public_key: Ed25519PublicKey | None = None, *,
                state_path: Path | None = None, now: dt.datetime | None = None
                ) -> list[VerifyReport]:
    """`verify_tree` that raises on any problem and records nothing.

    Raises:
        OTAVerificationError: listing every problem found (one per line).
    """
    tree = verify_tree(path, public_key, state_path=state_path, record=False, now=now)
    if tree.problems:
        raise OTAVerificationError("\n".join(tree.problems))
    return tree.reports
