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
