"""Staged OTA rollout, promotion and rollback of champions.

Why: a model that passed its gates on last month's data can still misbehave on a
phone. A new champion therefore reaches only a share of an athlete's devices first
(``rollout.initial_percent``, 10 % by default), the rest keep the previous champion,
and the app falls back to its rule-based engine when no model is valid. An engineer
widens the share (`promote_rollout`) or moves the champion back (`rollback_champion`).

State lives in the MLflow registry, on the champion version's tags, so the registry
stays the single source of truth and every manifest can be rebuilt from it:

* ``champion_set_by`` (``auto`` / ``review`` / ``rollback``), ``champion_set_at``,
  ``champion_set_reason``, ``champion_set_actor``;
* ``previous_champion_version``: what devices outside the rollout (and a rollback) use;
* ``rollout_percent`` and ``rollout_channel`` (``staged`` below 100 %, ``stable`` at
  100 %, ``rollback`` after a rollback), ``rollout_updated_at``.

A version without these tags (registered before rollouts existed) counts as a stable
champion at 100 % with no previous version.

Device bucketing is a pure function of (athlete, family, device): the first 8 bytes of
``sha256("<athlete_id>:<family>:<device_id>")`` read big-endian, modulo 100, and a
device is in the rollout when that bucket is below the percentage. The app implements
the same rule (it is written into every manifest), a device keeps its bucket forever,
and widening a rollout only ever adds devices.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from veloready_pipeline.config import Settings

BUCKETS = 100
STAGED, STABLE, ROLLBACK = "staged", "stable", "rollback"
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
TAG_SET_BY = "champion_set_by"
TAG_SET_AT = "champion_set_at"
TAG_SET_REASON = "champion_set_reason"
TAG_SET_ACTOR = "champion_set_actor"
TAG_PREVIOUS = "previous_champion_version"
TAG_PERCENT = "rollout_percent"
TAG_CHANNEL = "rollout_channel"
TAG_UPDATED = "rollout_updated_at"


class RolloutError(ValueError):
    """A promotion or rollback that is refused; the message says why and what to do."""


def now_iso() -> str:
    """UTC timestamp used in every decision tag."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


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


def channel_for(percent: int) -> str:
    """``stable`` at 100 %, ``staged`` below."""
    return STABLE if percent >= 100 else STAGED


@dataclass
class ChampionState:
    """The champion of one athlete's family and its rollout, as the registry holds it."""

    athlete_id: str
    family: str
    name: str
    version: str
    percent: int
    channel: str
    previous_version: str | None
    set_by: str
    set_at: str
    reason: str

    def as_manifest_block(self) -> dict[str, Any]:
        """The ``rollout`` block of one family in the OTA manifest."""
        return {
            "registry_name": self.name,
            "champion_version": self.version,
            "channel": self.channel,
            "percent": self.percent,
            "previous_version": self.previous_version,
            "set_by": self.set_by,
            "set_at": self.set_at,
            "bucketing": BUCKETING_RULE,
        }


def _client(settings: Settings) -> MlflowClient:
    from veloready_pipeline.registry import configure_mlflow

    return configure_mlflow(settings)


def _alias(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_state(client: MlflowClient, settings: Settings, athlete_id: str,
                   family: str) -> ChampionState | None:
    """The champion and rollout of one athlete's family, or None without a champion."""
    from veloready_pipeline.registry import CHAMPION, registered_name

    name = registered_name(settings, family, athlete_id)
    version = _alias(client, name, CHAMPION)
    if version is None:
        return None
    tags = client.get_model_version(name, version).tags
    percent = int(tags.get(TAG_PERCENT, "100"))
    return ChampionState(
        athlete_id=athlete_id,
        family=family,
        name=name,
        version=version,
        percent=percent,
        channel=tags.get(TAG_CHANNEL, channel_for(percent)),
        previous_version=tags.get(TAG_PREVIOUS) or None,
        set_by=tags.get(TAG_SET_BY, "unknown"),
        set_at=tags.get(TAG_SET_AT, ""),
        reason=tags.get(TAG_SET_REASON, ""),
    )


def mark_champion(client: MlflowClient, name: str, version: str, *, previous: str | None,
                  set_by: str, reason: str, actor: str, percent: int,
                  channel: str | None = None) -> None:
    """Point ``champion`` at a version and record who moved it, why, and its rollout."""
    from veloready_pipeline.registry import CHAMPION

    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in champion_tags(previous=previous, set_by=set_by, reason=reason,
                                    actor=actor, percent=percent, channel=channel).items():
        client.set_model_version_tag(name, version, key, value)


def champion_tags(*, previous: str | None, set_by: str, reason: str, actor: str,
                  percent: int, channel: str | None = None) -> dict[str, str]:
    """The version tags that record a champion move (who, when, why, rollout)."""
    stamp = now_iso()
    return {
        TAG_SET_BY: set_by,
        TAG_SET_AT: stamp,
        TAG_SET_REASON: reason[:4000],
        TAG_SET_ACTOR: actor,
        TAG_PREVIOUS: previous or "",
        TAG_PERCENT: str(int(percent)),
        TAG_CHANNEL: channel or channel_for(percent),
        TAG_UPDATED: stamp,
    }


def export_record(settings: Settings, family: str, athlete_id: str,
                  version: str) -> dict[str, Any] | None:
    """The export record of a registered version, or None if it was never exported/failed."""
    from veloready_pipeline.publish import RECORD, export_dir

    path = export_dir(settings, family, athlete_id, version) / RECORD
    if not path.exists():
        return None
    rec = json.loads(path.read_text(encoding="utf-8"))
    return None if "error" in rec else rec


def record_entries(record: dict[str, Any], role: str) -> list[dict[str, Any]]:
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


def manifest_content(settings: Settings, athlete_id: str,
                     client: MlflowClient | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Entries and the ``extra`` block of one athlete's manifest, rebuilt from the registry.

    Every family's champion is advertised with ``role: champion``; its previous champion
    (what devices outside the rollout keep) with ``role: previous`` when it was exported.
    A family whose champion has no export is left out and says so under ``rollout``:
    the app uses its rule-based fallback for it.
    """
    client = client or _client(settings)
    entries: list[dict[str, Any]] = []
    blocks: dict[str, Any] = {}
    from veloready_pipeline.families import FAMILIES

    for family in FAMILIES.names():
        state = champion_state(client, settings, athlete_id, family)
        if state is None:
            continue
        rec = export_record(settings, family, athlete_id, state.version)
        block = state.as_manifest_block()
        if rec is None:
            blocks[family] = block | {"shipped": False,
                                      "note": "champion has no export: rule-based fallback"}
            continue
        entries.extend(record_entries(rec, "champion"))
        prev_rec = (export_record(settings, family, athlete_id, state.previous_version)
                    if state.previous_version else None)
        if prev_rec is not None:
            entries.extend(record_entries(prev_rec, "previous"))
        elif state.previous_version:
            block["previous_version"] = None
            block["note"] = (f"previous v{state.previous_version} has no export: devices "
                             "outside the rollout use the rule-based fallback")
        blocks[family] = block | {"shipped": True}
    extra = {"rollout": blocks, "fallback": RULE_BASED_FALLBACK}
    return entries, extra


def publish_athlete(settings: Settings, athlete_id: str,
                    client: MlflowClient | None = None) -> Path | None:
    """Rewrite (atomically, signed) one athlete's manifest from the registry.

    Returns:
        The manifest path, or None when the athlete has no exported champion (then any
        old manifest is left as it is and the caller reports it).
    """
    from veloready_pipeline.export.ota import write_manifest

    entries, extra = manifest_content(settings, athlete_id, client)
    if not entries:
        return None
    return Path(write_manifest(
        settings.resolve(settings.paths.ota_dir), athlete_id, entries,
        settings.resolve(settings.paths.signing_key),
        minimum_ios=settings.export.minimum_ios, extra=extra,
        validity_days=settings.export.ota_validity_days,
    ))


def _require_champion(client: MlflowClient, settings: Settings, athlete_id: str,
                      family: str) -> ChampionState:
    from veloready_pipeline.registry import registered_name

    name = registered_name(settings, family, athlete_id)
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        raise RolloutError(
            f"athlete {athlete_id}, family {family}: no registered model {name!r}") from exc
    state = champion_state(client, settings, athlete_id, family)
    if state is None:
        raise RolloutError(f"athlete {athlete_id}, family {family}: {name} has no champion")
    return state


def _restore_tags(client: MlflowClient, name: str, version: str,
                  before: dict[str, str], keys: list[str]) -> None:
    for key in keys:
        if key in before:
            client.set_model_version_tag(name, version, key, before[key])
        else:
            try:
                client.delete_model_version_tag(name, version, key)
            except MlflowException:
                pass


def promote_rollout(settings: Settings, athlete_id: str, family: str, percent: int, *,
                    actor: str, reason: str = "") -> dict[str, Any]:
    """Widen the champion's rollout to ``percent`` % and re-sign the athlete's manifest.

    Raises:
        RolloutError: no champion, a percentage outside 1..100, narrowing (that is what
            a rollback is for), or a champion that was never exported.
    """
    if not 1 <= percent <= 100:
        raise RolloutError(f"--percent must be within 1..100, got {percent}")
    client = _client(settings)
    state = _require_champion(client, settings, athlete_id, family)
    if percent < state.percent:
        raise RolloutError(
            f"athlete {athlete_id}, family {family}: champion v{state.version} is already at "
            f"{state.percent} %; promote only widens a rollout (use `veloready registry "
            "rollback` to withdraw a champion)")
    if export_record(settings, family, athlete_id, state.version) is None:
        raise RolloutError(f"athlete {athlete_id}, family {family}: champion v{state.version} "
                           "has no export, so there is nothing to roll out")
    keys = [TAG_PERCENT, TAG_CHANNEL, TAG_UPDATED, "promoted_by", "promote_reason"]
    before = dict(client.get_model_version(state.name, state.version).tags)
    channel = ROLLBACK if state.channel == ROLLBACK else channel_for(percent)
    new_tags = {TAG_PERCENT: str(percent), TAG_CHANNEL: channel, TAG_UPDATED: now_iso(),
                "promoted_by": actor, "promote_reason": reason or f"widened to {percent} %"}
    for key, value in new_tags.items():
        client.set_model_version_tag(state.name, state.version, key, value)
    try:
        path = publish_athlete(settings, athlete_id, client)
    except Exception:
        _restore_tags(client, state.name, state.version, before, keys)
        raise
    return {"athlete_id": athlete_id, "family": family, "version": state.version,
            "from_percent": state.percent, "percent": percent, "channel": channel,
            "manifest": str(path) if path else None}


def _gate_passed(client: MlflowClient, mv: Any) -> tuple[bool, str]:
    """Whether a version's MLflow run recorded a passing gate (and the verdict text)."""
    run_id = mv.run_id or mv.tags.get("run_id")
    if not run_id:
        return False, "no MLflow run is linked to it"
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException:
        return False, f"its run {run_id} no longer exists"
    verdict = tags.get("gate_verdict", mv.tags.get("gate_verdict", ""))
    return tags.get("gate_passed") == "true", verdict


def rollback_champion(settings: Settings, athlete_id: str, family: str, *,
                      reason: str, actor: str, to_version: str | None = None
                      ) -> dict[str, Any]:
    """Move ``champion`` back and republish the athlete's signed manifest.

    The target is ``to_version`` or the current champion's previous champion. The
    restored version ships to 100 % at once (channel ``rollback``) and both versions
    record who rolled back, when and why.

    Raises:
        RolloutError: without a reason; when the current champion was itself set by a
            rollback (rolling back twice); when the target does not exist, is the current
            champion, never passed its gate, was rejected in review, or has no export.
    """
    if not reason or not reason.strip():
        raise RolloutError("a rollback needs a reason (--reason)")
    from veloready_pipeline.registry import CHAMPION

    client = _client(settings)
    state = _require_champion(client, settings, athlete_id, family)
    name, current = state.name, state.version
    where = f"athlete {athlete_id}, family {family} ({name})"
    if state.set_by == ROLLBACK:
        raise RolloutError(
            f"{where}: champion v{current} was itself set by a rollback on {state.set_at} "
            f"({state.reason!r}); refusing to roll back twice. Approve a new version "
            "(`veloready registry review`) or retrain instead.")
    target = to_version or state.previous_version
    if not target:
        raise RolloutError(f"{where}: champion v{current} has no previous champion "
                           "recorded; pass --to VERSION")
    target = str(target)
    if target == current:
        raise RolloutError(f"{where}: v{target} is already the champion")
    try:
        mv = client.get_model_version(name, target)
    except MlflowException as exc:
        raise RolloutError(f"{where}: version {target} does not exist") from exc
    passed, verdict = _gate_passed(client, mv)
    if not passed:
        why = verdict or "no passing verdict recorded"
        raise RolloutError(f"{where}: v{target} never passed its gate ({why}); "
                           "refusing to roll back to it")
    if mv.tags.get("review_decision") == "rejected":
        raise RolloutError(f"{where}: v{target} was rejected in review "
                           f"({mv.tags.get('reason', '')!r}); refusing to roll back to it")
    if export_record(settings, family, athlete_id, target) is None:
        raise RolloutError(f"{where}: v{target} has no export, so it cannot be shipped")

    stamp = now_iso()
    target_keys = [TAG_SET_BY, TAG_SET_AT, TAG_SET_REASON, TAG_SET_ACTOR, TAG_PREVIOUS,
                   TAG_PERCENT, TAG_CHANNEL, TAG_UPDATED, "rolled_back_from"]
    target_before = dict(mv.tags)
    mark_champion(client, name, target, previous=None, set_by=ROLLBACK, reason=reason,
                  actor=actor, percent=100, channel=ROLLBACK)
    client.set_model_version_tag(name, target, "rolled_back_from", current)
    try:
        path = publish_athlete(settings, athlete_id, client)
    except Exception:
        client.set_registered_model_alias(name, CHAMPION, current)
        _restore_tags(client, name, target, target_before, target_keys)
        raise
    for key, value in {"rolled_back": "true", "rolled_back_at": stamp,
                       "rolled_back_reason": reason[:4000], "rolled_back_by": actor,
                       "rolled_back_to": target}.items():
        client.set_model_version_tag(name, current, key, value)
    return {"athlete_id": athlete_id, "family": family, "from_version": current,
            "to_version": target, "reason": reason, "actor": actor, "at": stamp,
            "manifest": str(path) if path else None}
