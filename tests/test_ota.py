"""Signed OTA manifests: write, verify, tamper detection, idempotent atomic rewrites."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veloready_pipeline.export import ExportedArtifact, digest_path, size_path
from veloready_pipeline.export.ota import (
    OTAVerificationError,
    ensure_signing_key,
    key_id,
    load_public_key,
    public_key_path,
    verify_manifest,
    verify_path,
    write_manifest,
)


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
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    again = write_manifest(root, "a1", _entries(models), key, minimum_ios="17.0",
                           extra={"run_id": "r1"})
    assert again == manifest_path
    after = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
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
