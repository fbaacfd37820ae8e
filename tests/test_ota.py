"""Signed OTA manifests: write, verify, tamper detection, idempotent atomic rewrites,
identity (athlete, sequence, expiry) and one test per attack on an OTA folder."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from veloready_pipeline.cli import app
from veloready_pipeline.export import ExportedArtifact, digest_path, size_path
from veloready_pipeline.export.ota import (
    DEFAULT_VALIDITY_DAYS,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    OTAVerificationError,
    ensure_signing_key,
    issued_record_dir,
    key_id,
    load_public_key,
    public_key_path,
    verify_manifest,
    verify_path,
    write_manifest,
)


def _parse(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    """A fake ONNX file and a fake Core ML package folder (bytes are all that matter)."""
    src = tmp_path / "exports"
    onnx_file = src / "recovery.onnx"
    onnx_file.parent.mkdir(parents=True)
    onnx_file.write_bytes(bytes(range(256)) * 4)
    package = src / "zones_palette4.mlpackage"
    (package / "Data" / "com.apple.CoreML" / "weights").mkdir(parents=True)
    (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}')
    (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x08\x08spec" * 50)
    (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes(
        bytes(range(200)) * 10)
    return {"onnx": onnx_file, "package": package}


def _entries(models: dict[str, Path]) -> list[dict]:
    zones = ExportedArtifact(
        kind="coreml", variant="palette4", path=models["package"],
        size_bytes=size_path(models["package"]), sha256=digest_path(models["package"]),
        input_names=["x"], input_shapes=[[1, 13]], output_names=["y"], output_shapes=[[1, 4]])
    return [
        {"family": "recovery", "registry_name": "veloready-recovery-a1", "registry_version": 3,
         "variant": "float32", "path": models["onnx"], "input_names": ["features"],
         "input_shapes": [[-1, 5]], "output_names": ["prediction"], "output_shapes": [[-1, 1]],
         "metrics": {"rmse": 5.1}},
        {"family": "zones", "registry_name": "veloready-zones-a1", "registry_version": "2",
         "artifact": zones},
    ]


@pytest.fixture
def published(tmp_path: Path, models) -> tuple[Path, Path, Path]:
    root, key = tmp_path / "ota", tmp_path / "keys" / "ota.pem"
    manifest = write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                              extra={"run_id": "r1"})
    return root, key, manifest


def test_written_manifest_verifies_and_lists_every_model(published, models) -> None:
    root, key, manifest_path = published
    assert manifest_path == root / "a1" / "manifest.json"
    report = verify_manifest(manifest_path, load_public_key(key))
    assert report.key_source == "given" and report.n_files == 2
    assert verify_manifest(manifest_path).key_source == "embedded"

    manifest = json.loads(manifest_path.read_bytes())
    assert manifest["athlete_id"] == "a1" and manifest["minimum_ios"] == "17.0"
    assert manifest["run_id"] == "r1"
    by_family = {m["family"]: m for m in manifest["models"]}
    zones = by_family["zones"]
    assert zones["file"] == "a1/zones/2/zones_palette4.mlpackage.zip"
    assert zones["quantization"] == "palette4" and zones["format"] == "mlpackage.zip"
    assert zones["package_sha256"] == digest_path(models["package"])
    assert zones["input_shapes"] == [[1, 13]] and zones["output_names"] == ["y"]
    rec = by_family["recovery"]
    assert rec["quantization"] == "none" and rec["registry_version"] == "3"
    assert rec["sha256"] == digest_path(models["onnx"]) and rec["metrics"] == {"rmse": 5.1}
    assert rec["created_at"].endswith("Z")
    # Canonical JSON: exactly the bytes that were signed.
    assert manifest_path.read_bytes() == json.dumps(
        manifest, sort_keys=True, separators=(",", ":")).encode()


def test_key_is_private_and_reused(published) -> None:
    _, key, _ = published
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert public_key_path(key).is_file()
    first = ensure_signing_key(key).public_key()
    assert key_id(first) == key_id(ensure_signing_key(key).public_key())
    assert key_id(load_public_key(public_key_path(key))) == key_id(first)


@pytest.mark.parametrize("which", ["zones", "recovery"])
def test_one_flipped_byte_in_a_model_file_fails_naming_the_file(published, which) -> None:
    root, key, manifest_path = published
    rel = {"zones": "a1/zones/2/zones_palette4.mlpackage.zip",
           "recovery": "a1/recovery/3/recovery.onnx"}[which]
    target = root / rel
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(OTAVerificationError, match=rf"{rel}: sha256 mismatch"):
        verify_path(root, load_public_key(key))


def test_truncated_or_missing_file_fails(published) -> None:
    root, _, manifest_path = published
    target = root / "a1/recovery/3/recovery.onnx"
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(OTAVerificationError, match="recovery.onnx: size mismatch"):
        verify_manifest(manifest_path)
    target.unlink()
    with pytest.raises(OTAVerificationError, match="recovery.onnx: listed in .* but missing"):
        verify_manifest(manifest_path)


def test_tampered_manifest_fails_the_signature(published) -> None:
    root, key, manifest_path = published
    manifest = json.loads(manifest_path.read_bytes())
    manifest["minimum_ios"] = "16.0"
    manifest_path.write_bytes(json.dumps(manifest, sort_keys=True,
                                         separators=(",", ":")).encode())
    with pytest.raises(OTAVerificationError, match="a1/manifest.json: Ed25519 signature"):
        verify_manifest(manifest_path, load_public_key(key))


def test_manifest_signed_by_another_key_is_rejected(published) -> None:
    _, _, manifest_path = published
    stranger = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(OTAVerificationError, match="signed by key"):
        verify_manifest(manifest_path, stranger)


def test_rewriting_the_same_content_changes_nothing(published, models) -> None:
    root, key, manifest_path = published
    # Every file, the lock and the publisher's issued record included.
    trees = (root, issued_record_dir(root))
    files = sorted(p for t in trees for p in t.rglob("*") if p.is_file())
    assert root / "a1" / ".manifest.lock" in files
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    again = write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                           extra={"run_id": "r1"})
    assert again == manifest_path
    after = sorted(p for t in trees for p in t.rglob("*") if p.is_file())
    assert after == files
    for p in files:
        assert (p.read_bytes(), p.stat().st_mtime_ns) == before[p], p
    assert not list(root.rglob("*.tmp"))
    verify_path(root, load_public_key(key))


def test_a_new_model_file_is_republished_and_verifies(published, models) -> None:
    root, key, manifest_path = published
    old = json.loads(manifest_path.read_bytes())
    models["onnx"].write_bytes(b"retrained" * 100)
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0")
    new = json.loads(manifest_path.read_bytes())
    rec_old = next(m for m in old["models"] if m["family"] == "recovery")
    rec_new = next(m for m in new["models"] if m["family"] == "recovery")
    assert rec_new["sha256"] == digest_path(models["onnx"]) != rec_old["sha256"]
    assert (root / rec_new["file"]).read_bytes() == models["onnx"].read_bytes()
    assert verify_manifest(manifest_path, load_public_key(key)).n_files == 2


def test_merge_keeps_other_families(published, models) -> None:
    root, key, manifest_path = published
    write_manifest(root, "a1", _entries(models)[:1], key, minimum_ios="17.0", merge=True)
    assert {m["family"] for m in json.loads(manifest_path.read_bytes())["models"]} == {
        "recovery", "zones"}
    write_manifest(root, "a1", _entries(models)[:1], key, minimum_ios="17.0")
    assert {m["family"] for m in json.loads(manifest_path.read_bytes())["models"]} == {
        "recovery"}
    verify_manifest(manifest_path)


def test_verify_path_walks_a_folder(tmp_path, models, published) -> None:
    root, key, _ = published
    write_manifest(root, "a2", _entries(models)[:1], key, minimum_ios="17.0")
    reports = verify_path(root)
    assert [r.athlete_id for r in reports] == ["a1", "a2"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(OTAVerificationError, match="no manifest.json"):
        verify_path(tmp_path / "empty")


@pytest.mark.parametrize(
    ("athlete", "change", "match"),
    [
        ("a\nb", {}, r"athlete 'a\\nb': athlete id contains control character U\+000A"),
        ("  ", {}, "empty or only whitespace"),
        ("a1", {"family": "zones/x"}, "athlete a1: family"),
        ("a1", {"registry_name": None}, r"athlete a1: .*lacks \['registry_name'\]"),
        ("a1", {"sha256": "0" * 64}, "computed fields"),
        ("a1", {"path": Path("/nonexistent/model.onnx")}, "does not exist"),
    ],
)
def test_bad_entries_are_rejected_naming_athlete_and_field(tmp_path, models, athlete, change,
                                                           match) -> None:
    entry = {**_entries(models)[0], **change}
    with pytest.raises(ValueError, match=match):
        write_manifest(tmp_path / "ota", athlete, [entry], tmp_path / "k.pem",
                       minimum_ios="17.0")


# ------------------------------------------------------------------ identity and freshness


def _doc(path: Path) -> dict:
    return json.loads(path.read_bytes())


def test_manifest_names_athlete_sequence_and_expiry(published) -> None:
    _, key, manifest_path = published
    m = _doc(manifest_path)
    assert m["athlete_id"] == "a1" and m["sequence"] == 1
    issued = dt.datetime.fromisoformat(m["issued_at"].replace("Z", "+00:00"))
    expires = dt.datetime.fromisoformat(m["expires_at"].replace("Z", "+00:00"))
    assert expires - issued == dt.timedelta(days=DEFAULT_VALIDITY_DAYS) == dt.timedelta(days=30)
    rep = verify_manifest(manifest_path, load_public_key(key))
    assert (rep.athlete_id, rep.sequence, rep.expires_at) == ("a1", 1, m["expires_at"])
    with pytest.raises(ValueError, match=r"extra fields \['sequence'\] are set by the writer"):
        write_manifest(manifest_path.parent.parent, "a1", [], key, minimum_ios="17.0",
                       merge=True, extra={"sequence": 99})


def test_sequence_grows_on_change_and_renewal_but_not_on_a_plain_rerun(published, models):
    root, key, manifest_path = published
    t0 = _parse(_doc(manifest_path)["issued_at"])
    before = manifest_path.read_bytes()
    # Unchanged content within half the validity: same bytes, same sequence.
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                   extra={"run_id": "r1"}, now=t0 + dt.timedelta(days=14))
    assert manifest_path.read_bytes() == before
    # Changed content: the next sequence, signed now.
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                   extra={"run_id": "r2"}, now=t0 + dt.timedelta(days=1))
    m2 = _doc(manifest_path)
    assert m2["sequence"] == 2 and _parse(m2["issued_at"]) == t0 + dt.timedelta(days=1)
    # Unchanged content past half the validity: renewed with the next sequence.
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                   extra={"run_id": "r2"}, now=t0 + dt.timedelta(days=16))
    m3 = _doc(manifest_path)
    assert m3["sequence"] == 3 and m3["models"] == m2["models"]
    assert _parse(m3["expires_at"]) == t0 + dt.timedelta(days=46)
    # A different validity setting re-signs too.
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                   extra={"run_id": "r2"}, now=t0 + dt.timedelta(days=16), validity_days=7)
    assert _doc(manifest_path)["sequence"] == 4
    rec = json.loads((issued_record_dir(root) / "a1.json").read_text())
    assert rec["sequence"] == 4
    assert not issued_record_dir(root).is_relative_to(root)  # never served


def test_a_deleted_or_replayed_folder_manifest_never_lowers_the_sequence(published, models):
    root, key, manifest_path = published
    old = (manifest_path.read_bytes(), (root / "a1" / SIGNATURE_NAME).read_bytes())
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0", extra={"run_id": "r2"})
    assert _doc(manifest_path)["sequence"] == 2
    manifest_path.unlink()
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0", extra={"run_id": "r2"})
    assert _doc(manifest_path)["sequence"] == 3
    # An old, correctly signed manifest put back: the publisher re-signs with 4.
    manifest_path.write_bytes(old[0])
    (root / "a1" / SIGNATURE_NAME).write_bytes(old[1])
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0", extra={"run_id": "r1"})
    assert _doc(manifest_path)["sequence"] == 4 and _doc(manifest_path)["run_id"] == "r1"


def test_a_forged_folder_manifest_is_never_kept_by_the_writer(published, models):
    root, key, manifest_path = published
    forged = _doc(manifest_path) | {"expires_at": "2099-01-01T00:00:00Z", "sequence": 10**9}
    manifest_path.write_bytes(json.dumps(forged, sort_keys=True, separators=(",", ":")).encode())
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0", extra={"run_id": "r1"})
    m = _doc(manifest_path)
    assert m["sequence"] == 2 and m["expires_at"] != "2099-01-01T00:00:00Z"
    assert verify_manifest(manifest_path, load_public_key(key)).sequence == 2


# ------------------------------------------------------------------ one test per OTA attack


def _verify(root: Path, *args: str, key: Path | None = None):
    cmd = ["ota", "verify", str(root), *args]
    if key is not None:
        cmd += ["--public-key", str(public_key_path(key))]
    return CliRunner().invoke(app, cmd)


@pytest.fixture
def two_athletes(veloready_home, tmp_path: Path, models):
    """a1 and a2 published under one trusted key, verified once (state recorded)."""
    root, key = tmp_path / "ota", tmp_path / "keys" / "ota.pem"
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0")
    write_manifest(root, "a2", _entries(models)[:1], key, minimum_ios="17.0")
    first = _verify(root, key=key)
    assert first.exit_code == 0, first.output
    assert "2 manifest(s) verified with trusted key" in first.output
    assert set(json.loads((tmp_path / "ota.accepted.json").read_text())["athletes"]) == {
        "a1", "a2"}
    return root, key


def test_attack_foreign_athletes_signed_manifest_copied_in(two_athletes):
    root, key = two_athletes
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        (root / "a1" / name).write_bytes((root / "a2" / name).read_bytes())
    res = _verify(root, key=key)
    assert res.exit_code == 1, res.output
    assert ("a1/manifest.json: names athlete 'a2' but sits in the folder of athlete 'a1'"
            in res.output)


def test_attack_replay_of_an_old_manifest_after_a_newer_publish(two_athletes, models,
                                                               tmp_path):
    root, key = two_athletes
    old = {n: (root / "a1" / n).read_bytes() for n in (MANIFEST_NAME, SIGNATURE_NAME)}
    # A newer manifest (as `ota promote` writes: same files, a wider rollout), verified.
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                   extra={"rollout": {"recovery": {"percent": 100}}})
    assert _verify(root, key=key).exit_code == 0
    for name, data in old.items():
        (root / "a1" / name).write_bytes(data)
    res = _verify(root, key=key)
    assert res.exit_code == 1, res.output
    assert ("a1/manifest.json: sequence 1 is older than the last accepted sequence 2 "
            "(replayed or rolled-back manifest): refused") in res.output
    # A verifier that never saw sequence 2 still refuses: the publisher issued it.
    res = _verify(root, "--state", str(tmp_path / "fresh.json"), key=key)
    assert res.exit_code == 1, res.output
    assert "sequence 1 is older than the last issued sequence 2" in res.output


def test_attack_expired_manifest(veloready_home, tmp_path, models):
    root, key = tmp_path / "ota", tmp_path / "keys" / "ota.pem"
    signed = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=31)
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0", now=signed)
    res = _verify(root, key=key)
    assert res.exit_code == 1, res.output
    assert "a1/manifest.json: expired at " in res.output and "(1.0 days ago" in res.output
    # A manifest dated in the future is refused too (a skewed or forged clock).
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                   now=signed + dt.timedelta(days=33))
    res = _verify(root, key=key)
    assert res.exit_code == 1 and "lies in the future" in res.output, res.output


def test_attack_resigned_with_an_embedded_key_and_no_trusted_key(two_athletes, models):
    root, key = two_athletes
    attacker = Ed25519PrivateKey.generate()
    body = json.loads((root / "a1" / MANIFEST_NAME).read_bytes())
    body["minimum_ios"] = "15.0"
    body["sequence"] = 5  # a "newer" manifest, so no sequence check stands in the way
    data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    raw = attacker.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    (root / "a1" / MANIFEST_NAME).write_bytes(data)
    (root / "a1" / SIGNATURE_NAME).write_text(json.dumps({
        "algorithm": "Ed25519", "key_id": key_id(attacker.public_key()),
        "public_key": base64.b64encode(raw).decode(),
        "signature": base64.b64encode(attacker.sign(data)).decode(),
        "manifest_sha256": hashlib.sha256(data).hexdigest()}))
    # No --public-key and no configured key (VELOREADY_HOME is empty): refused outright.
    res = _verify(root)
    assert res.exit_code == 2, res.output
    assert "no trusted public key" in res.output and "--integrity-only" in res.output
    # Told --integrity-only it runs, says loudly that identity is not proven, exits 3.
    res = _verify(root, "--integrity-only")
    assert res.exit_code == 3, res.output
    assert "WHO signed is NOT proven" in res.output
    assert "INTEGRITY ONLY: identity not proven" in res.output
    # With the trusted key the forgery is named.
    res = _verify(root, key=key)
    assert res.exit_code == 1 and "a1/manifest.json: signed by key" in res.output, res.output


def test_attack_unlisted_files_are_reported_and_pruned_on_publish(two_athletes, models):
    root, key = two_athletes
    (root / "a1" / "payload.bin").write_bytes(b"not in any manifest")
    (root / "a1" / "recovery" / "3" / "recovery_v2.onnx").write_bytes(b"\0" * 10)
    (root / "index.html").write_text("<html/>")
    res = _verify(root, key=key)
    assert res.exit_code == 1, res.output
    for line in ("a1/payload.bin: not listed in a1/manifest.json",
                 "a1/recovery/3/recovery_v2.onnx: not listed in a1/manifest.json",
                 "index.html: stray file at the top of the OTA root"):
        assert line in res.output, res.output
    # The writer leaves no unlisted file in an athlete's folder.
    before = (root / "a1" / MANIFEST_NAME).read_bytes()
    write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0")
    assert (root / "a1" / MANIFEST_NAME).read_bytes() == before
    assert not (root / "a1" / "payload.bin").exists()
    assert not (root / "a1" / "recovery" / "3" / "recovery_v2.onnx").exists()


@pytest.mark.parametrize("what", ["folder", "manifest"])
def test_attack_deleted_athlete_manifest_is_reported(two_athletes, tmp_path, what):
    root, key = two_athletes
    if what == "folder":
        shutil.rmtree(root / "a2")
    else:
        (root / "a2" / MANIFEST_NAME).unlink()
        (root / "a2" / SIGNATURE_NAME).unlink()
    res = _verify(root, key=key)
    assert res.exit_code == 1, res.output
    assert "a2/manifest.json: missing" in res.output and "had sequence 1" in res.output
    assert "1 manifest(s) verified" in res.output
    # Without the accepted state the publisher's issued record still names it.
    res = _verify(root, "--state", str(tmp_path / "fresh.json"), key=key)
    assert res.exit_code == 1 and "a2/manifest.json: missing" in res.output, res.output


def test_integrity_only_records_nothing_and_bad_state_is_a_usage_error(two_athletes,
                                                                      tmp_path):
    root, key = two_athletes
    state = tmp_path / "ota.accepted.json"
    before = state.read_bytes()
    res = _verify(root, "--integrity-only")
    assert res.exit_code == 3, res.output
    assert state.read_bytes() == before
    state.write_text("{not json")
    res = _verify(root, key=key)
    assert res.exit_code == 2 and f"verify state {state}: unreadable" in res.output, res.output
    res = _verify(root / "nope", key=key)
    assert res.exit_code == 2 and "no such file or folder" in res.output


def test_validity_is_a_setting(monkeypatch) -> None:
    from veloready_pipeline.config import load_settings

    assert load_settings().export.ota_validity_days == DEFAULT_VALIDITY_DAYS
    monkeypatch.setenv("VELOREADY_EXPORT__OTA_VALIDITY_DAYS", "7")
    assert load_settings().export.ota_validity_days == 7
    monkeypatch.setenv("VELOREADY_EXPORT__OTA_VALIDITY_DAYS", "0")
    with pytest.raises(ValueError, match="ota_validity_days"):
        load_settings()


def test_an_id_that_is_not_a_plain_name_keeps_its_identity(tmp_path, models) -> None:
    from veloready_pipeline.ids import athlete_key

    root, key = tmp_path / "ota", tmp_path / "k.pem"
    odd, other = "Zoë/../a", "zoe a"
    path = write_manifest(root, odd, _entries(models)[:1], key, minimum_ios="17.0")
    assert path.parent.name == athlete_key(odd) != odd
    rep = verify_manifest(path, load_public_key(key))
    assert (rep.athlete_id, rep.folder, rep.sequence) == (odd, athlete_key(odd), 1)
    assert json.loads((issued_record_dir(root) / f"{athlete_key(odd)}.json").read_text())[
        "athlete_id"] == odd
    # Another id's manifest (same slug, other hash) in this folder is refused.
    theirs = write_manifest(root, other, _entries(models)[:1], key, minimum_ios="17.0")
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        (path.parent / name).write_bytes((theirs.parent / name).read_bytes())
    with pytest.raises(OTAVerificationError, match="names athlete 'zoe a' but sits in the "
                       "folder of athlete 'zoe-a--"):
        verify_manifest(path, load_public_key(key))


def test_an_unwritable_state_is_a_usage_error(two_athletes, tmp_path):
    root, key = two_athletes
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the state folder should be")
    res = _verify(root, "--state", str(blocker / "state.json"), key=key)
    assert res.exit_code == 2, res.output
    assert "not_a_dir/state.json" in res.output and "Traceback" not in res.output
