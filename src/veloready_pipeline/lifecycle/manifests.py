"""Export records and what a signed OTA manifest says about them (no MLflow here).

Each registered version's export lands in ``<data_dir>/exports/<family>/<athlete>/
v<version>/`` with an ``export.json`` record (`export_dir`, `RECORD`, `export_record`);
`manifest_entries` turns one record into the manifest entries of that version, the
one writer of entries for the publish stage and for rollouts alike.

Every manifest also carries the device rule of a staged rollout (`BUCKETING_RULE`) and
the app's rule-based fallback (`RULE_BASED_FALLBACK`). Device bucketing is a pure
function of (athlete, family, device): the first 8 bytes of
``sha256("<athlete_id>:<family>:<device_id>")`` read big-endian, modulo 100, and a
device is in the rollout when that bucket is below the percentage. The app implements
the same rule, a device keeps its bucket forever, and widening a rollout only ever adds
devices.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from veloready_pipeline.config import Settings
from veloready_pipeline.ids import athlete_key

RECORD = "export.json"
BUCKETS = 100
BUCKETING_RULE = {
    "hash": "sha256",
    "key": "<athlete_id>:<family>:<device_id>",
    "bucket": "int.from_bytes(digest[:8], 'big') % 100",
    "in_rollout": "bucket < percent",
}
RULE_BASED_FALLBACK = {
    "kind": "rule_based",
    "engine": "veloready-rules",
    "when": "a family has no entry, the device is outside the rollout and no previous "
    "version is listed, or a listed file fails its size/sha256 check",
}


def export_dir(settings: Settings, family: str, athlete_id: str, version: str) -> Path:
    """Where one registered version's exported files live (`ids.athlete_key` folder)."""
    return (settings.resolve(settings.paths.data_dir) / "exports" / family
            / athlete_key(athlete_id) / f"v{version}")


def export_record(settings: Settings, family: str, athlete_id: str,
                  version: str) -> dict[str, Any] | None:
    """The export record of a registered version, or None if it was never exported/failed."""
    path = export_dir(settings, family, athlete_id, version) / RECORD
    if not path.exists():
        return None
    rec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return None if "error" in rec else rec


def manifest_entries(record: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """`write_manifest` entries of one exported version: the shipped file plus ONNX.

    ``role`` is ``champion`` or ``previous`` (what devices outside the rollout keep).
    """
    arts = record["artifacts"]
    keys = [record["shipped"]] + (["onnx"] if record["shipped"] != "onnx" and "onnx" in arts
                                  else [])
    out = []
    for key in keys:
        art = arts[key]
        out.append({
            "family": record["family"],
            "registry_name": record["registry_name"],
            "registry_version": str(record["registry_version"]),
            "variant": art["variant"],
            "kind": art["kind"],
            "path": art["path"],
            "input_names": art["input_names"],
            "input_shapes": art["input_shapes"],
            "output_names": art["output_names"],
            "output_shapes": art["output_shapes"],
            "role": role,
            "gate_metrics": record.get("gate_metrics", {}),
        })
    return out


def device_bucket(device_id: str, athlete_id: str, family: str) -> int:
    """The device's stable bucket in [0, 100) for one athlete's family."""
    key = f"{athlete_id}:{family}:{device_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % BUCKETS


def in_rollout(device_id: str, athlete_id: str, family: str, percent: int) -> bool:
    """Whether a device gets the new champion at a rollout of ``percent`` %.

    Raises:
        ValueError: if ``percent`` is outside 0..100.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"rollout percent must be within 0..100, got {percent}")
    return device_bucket(device_id, athlete_id, family) < percent


def shipped_in_manifest(manifest: str | Path | None, name: str, version: str) -> str | None:
    """Why a version is not advertised as champion by a signed manifest (None if it is).

    Checks the manifest's signature file is there and was made for exactly these bytes
    (its ``manifest_sha256``), and that an entry lists ``name`` v``version`` as champion.
    The full cryptographic check is `veloready ota verify`.
    """
    if manifest is None:
        return "no OTA manifest was written for this athlete"
    path = Path(manifest)
    sig = path.with_name(path.name + ".sig")
    try:
        body = path.read_bytes()
        signed = json.loads(sig.read_text(encoding="utf-8")).get("manifest_sha256")
    except (OSError, ValueError) as exc:
        return f"manifest or signature unreadable ({type(exc).__name__}: {exc})"
    if signed != hashlib.sha256(body).hexdigest():
        return "the manifest's signature was made for other bytes (unsigned manifest)"
    for entry in json.loads(body).get("models", []):
        if (entry.get("registry_name") == name and str(entry.get("registry_version")) == version
                and entry.get("role", "champion") == "champion"):
            return None
    return f"the signed manifest does not list {name} v{version} as champion"


def lifecycle_status(out: Any, record: dict[str, Any] | None,
                     manifest: str | None) -> tuple[str, str]:
    """Status and reason of a gate-passing model that has a registry version.

    ``registered`` only for a version that is what it should be at the end of a run:
    the champion, advertised by the athlete's signed manifest, or the challenger awaiting
    review, with its export on disk (what an approval ships). A version that is neither
    is ``not_promoted`` (it lost to the champion, was rejected, or its interrupted
    registration was withdrawn); a champion or challenger without its export or signed
    manifest is ``unshipped`` (the next run repairs it).
    """
    version = str(out.version)
    decision = str(getattr(out, "decision", "") or "")
    champion = out.champion_version is not None and str(out.champion_version) == version
    if not champion and not getattr(out, "challenger", False):
        return "not_promoted", decision
    role = "champion" if champion else "challenger"
    if not record or "error" in record:
        why = (record or {}).get("error", "no export record")
        return "unshipped", f"{role} v{version} has no export ({why}); {decision}"
    if champion:
        missing = shipped_in_manifest(manifest, str(out.registered_name), version)
        if missing:
            return "unshipped", f"champion v{version} is not shipped: {missing}; {decision}"
    return "registered", decision
