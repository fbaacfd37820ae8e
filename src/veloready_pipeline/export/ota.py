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

__all__ = [
    "MANIFEST_NAME",
    "OTAVerificationError",
    "SIGNATURE_NAME",
    "VerifyReport",
    "ensure_signing_key",
    "key_id",
    "load_public_key",
    "public_key_path",
    "verify_manifest",
    "verify_path",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
SCHEMA_VERSION = 1
_ALGORITHM = "Ed25519"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_REQUIRED = ("family", "registry_name", "registry_version", "variant")
# Keys the writer computes; an entry may not set them.
_COMPUTED = ("file", "sha256", "size_bytes", "package_sha256", "format")


class OTAVerificationError(RuntimeError):
    """A manifest's signature, or a file it lists, does not check out."""


@dataclass
class VerifyReport:
    """What `verify_manifest` checked (everything in it passed)."""

    manifest: Path
    athlete_id: str
    key_id: str
    key_source: str  # "given" (trusted key) or "embedded" (integrity only)
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return len(self.files)


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
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"signing key {path}: not an unencrypted PEM private key ({exc})"
                         ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"signing key {path}: expected Ed25519, got {type(key).__name__}")
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
    """Write ``data`` to ``path`` via a synced temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


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
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if source.is_dir():
            _zip_package(source, tmp)
        else:
            shutil.copyfile(source, tmp)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        if dest.is_file() and digest_path(dest) == digest_path(tmp):
            tmp.unlink()
            return
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".manifest.lock", "w") as fh:
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


def write_manifest(out_dir: Path, athlete_id: str, entries: list[dict[str, Any]],
                   key_path: Path, *, minimum_ios: str, extra: dict[str, Any] | None = None,
                   merge: bool = False) -> Path:
    """Publish an athlete's models and their signed manifest; return the manifest path.

    Args:
        out_dir: the OTA root.
        athlete_id: becomes the folder name (letters, digits, ``._-``).
        entries: one dict per model file with ``family``, ``registry_name``,
            ``registry_version``, ``variant`` (or ``quantization``) and either ``path``
            plus ``input_names/input_shapes/output_names/output_shapes``, or
            ``artifact`` (an `ExportedArtifact`, which supplies those). Optional:
            ``created_at`` (UTC ISO; default: kept from an identical earlier entry,
            else now) and any JSON-serialisable extras (metrics, gate verdict, ...).
        key_path: Ed25519 private key (PEM), created on first use.
        minimum_ios: the lowest iOS version the listed models need, e.g. ``"17.0"``.
        extra: top-level fields added to the manifest (e.g. run id, data window).
        merge: keep entries of families that ``entries`` does not mention (for flows
            that publish one family at a time); default replaces the whole list.

    Raises:
        ValueError: naming the athlete and the field, for bad entries.
    """
    from veloready_pipeline.ids import athlete_key, id_problem

    out_dir = Path(out_dir)
    problem = id_problem(athlete_id)
    if problem:
        raise ValueError(f"athlete {athlete_id!r}: {problem}")
    folder = athlete_key(athlete_id)  # the exact id stays in the manifest
    if not entries and not merge:
        raise ValueError(f"athlete {athlete_id}: no model entries to publish")
    normalised = [_normalise_entry(athlete_id, e) for e in entries]
    key = ensure_signing_key(key_path)
    athlete_dir = out_dir / folder
    manifest_path = athlete_dir / MANIFEST_NAME
    with _locked(athlete_dir):
        previous = _read_manifest(manifest_path) or {}
        old_models = {(_entry_key(m)): m for m in previous.get("models", [])
                      if isinstance(m, dict) and all(k in m for k in
                                                     ("family", "registry_version",
                                                      "variant", "kind"))}
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
                entry["created_at"] = old["created_at"] if same and "created_at" in old \
                    else _utc_now()
            models.append(entry)
        if merge:
            families = {m["family"] for m in models}
            models += [m for k, m in old_models.items() if k[0] not in families]
        models.sort(key=lambda m: (m["family"], m["kind"], m["variant"], m["file"]))
        manifest: dict[str, Any] = {
            **(extra or {}),
            "schema_version": SCHEMA_VERSION,
            "athlete_id": athlete_id,
            "minimum_ios": str(minimum_ios),
            "models": models,
        }
        body = _canonical(manifest)
        signature = key.sign(body)
        pub = key.public_key()
        sig_doc = _canonical({
            "algorithm": _ALGORITHM,
            "key_id": key_id(pub),
            "public_key": base64.b64encode(_raw_public(pub)).decode("ascii"),
            "signature": base64.b64encode(signature).decode("ascii"),
            "manifest_sha256": hashlib.sha256(body).hexdigest(),
        })
        sig_path = athlete_dir / SIGNATURE_NAME
        unchanged = (manifest_path.is_file() and manifest_path.read_bytes() == body
                     and sig_path.is_file() and sig_path.read_bytes() == sig_doc)
        if not unchanged:
            _atomic_write(manifest_path, body)
            _atomic_write(sig_path, sig_doc)
    return manifest_path


# ----------------------------------------------------------------------------- verifying


def verify_manifest(path: Path, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Check a manifest's signature and every listed file's size and SHA-256.

    Args:
        path: a ``manifest.json``.
        public_key: the trusted key. Without it the public key embedded in the signature
            file is used: that proves integrity (nothing changed since signing) but not
            origin; pass the key (see `load_public_key`) to prove origin too.

    Raises:
        OTAVerificationError: naming the manifest or the file and what did not match.
    """
    path = Path(path)
    root = path.parent.parent
    sig_path = path.with_name(SIGNATURE_NAME)
    where = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    try:
        body = path.read_bytes()
        sig_doc = json.loads(sig_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise OTAVerificationError(f"{where}: missing {Path(exc.filename).name}") from exc
    except ValueError as exc:
        raise OTAVerificationError(f"{where}: unreadable signature file ({exc})") from exc
    if sig_doc.get("algorithm") != _ALGORITHM:
        raise OTAVerificationError(f"{where}: unsupported algorithm {sig_doc.get('algorithm')!r}")
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(sig_doc["public_key"]))
        signature = base64.b64decode(sig_doc["signature"])
    except (KeyError, ValueError) as exc:
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
    manifest = json.loads(body)
    report = VerifyReport(manifest=path, athlete_id=str(manifest.get("athlete_id")),
                          key_id=sig_doc["key_id"], key_source=source)
    for entry in manifest.get("models", []):
        rel = str(entry.get("file", ""))
        target = (root / rel).resolve()
        if not rel or not target.is_relative_to(root.resolve()):
            raise OTAVerificationError(f"{where}: entry {entry.get('family')!r} has an "
                                       f"unsafe file path {rel!r}")
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
        report.files.append({"file": rel, "sha256": digest, "size_bytes": size})
    return report


def verify_path(path: Path, public_key: Ed25519PublicKey | None = None) -> list[VerifyReport]:
    """Verify one manifest file, or every ``manifest.json`` under a folder (recursive).

    Raises:
        OTAVerificationError: on the first failure, or if a folder holds no manifest.
    """
    path = Path(path)
    if path.is_file():
        return [verify_manifest(path, public_key)]
    if not path.is_dir():
        raise OTAVerificationError(f"{path}: no such file or folder")
    manifests = sorted(path.rglob(MANIFEST_NAME))
    if not manifests:
        raise OTAVerificationError(f"{path}: no {MANIFEST_NAME} found")
    return [verify_manifest(m, public_key) for m in manifests]
