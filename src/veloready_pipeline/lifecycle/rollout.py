"""Staged OTA rollout, promotion and rollback of champions.

Why: a model that passed its gates on last month's data can still misbehave on a
phone. A new champion therefore reaches only a share of an athlete's devices first
(``rollout.initial_percent``, 10 % by default), the rest keep the previous champion,
and the app falls back to its rule-based engine when no model is valid. An engineer
widens the share (`promote_rollout`) or moves the champion back (`rollback_champion`).

State lives in the MLflow registry, on the champion version's tags (their names and
the functions that write them: `lifecycle.store`), so the registry stays the single
source of truth and every manifest can be rebuilt from it (`lifecycle.publish`). Which
devices are in a rollout is the bucketing rule of `lifecycle.manifests`.
"""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from veloready_pipeline.config import Settings
from veloready_pipeline.lifecycle.manifests import export_record
from veloready_pipeline.lifecycle.publish import publish_athlete
from veloready_pipeline.lifecycle.store import (
    CHAMPION,
    ROLLBACK,
    TAG_CHANNEL,
    TAG_DECISION,
    TAG_GATE_VERDICT,
    TAG_PERCENT,
    TAG_PREVIOUS,
    TAG_PROMOTE_REASON,
    TAG_PROMOTED_BY,
    TAG_REASON,
    TAG_ROLLED_BACK,
    TAG_ROLLED_BACK_AT,
    TAG_ROLLED_BACK_BY,
    TAG_ROLLED_BACK_FROM,
    TAG_ROLLED_BACK_REASON,
    TAG_ROLLED_BACK_TO,
    TAG_SET_ACTOR,
    TAG_SET_AT,
    TAG_SET_BY,
    TAG_SET_REASON,
    TAG_UPDATED,
    ChampionState,
    champion_state,
    channel_for,
    configure_mlflow,
    mark_champion,
    now_iso,
    registered_name,
)


class RolloutError(ValueError):
    """A promotion or rollback that is refused; the message says why and what to do."""


def _require_champion(client: MlflowClient, settings: Settings, athlete_id: str,
                      family: str) -> ChampionState:
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
    client = configure_mlflow(settings)
    state = _require_champion(client, settings, athlete_id, family)
    if percent < state.percent:
        raise RolloutError(
            f"athlete {athlete_id}, family {family}: champion v{state.version} is already at "
            f"{state.percent} %; promote only widens a rollout (use `veloready registry "
            "rollback` to withdraw a champion)")
    if export_record(settings, family, athlete_id, state.version) is None:
        raise RolloutError(f"athlete {athlete_id}, family {family}: champion v{state.version} "
                           "has no export, so there is nothing to roll out")
    keys = [TAG_PERCENT, TAG_CHANNEL, TAG_UPDATED, TAG_PROMOTED_BY, TAG_PROMOTE_REASON]
    before = dict(client.get_model_version(state.name, state.version).tags)
    channel = ROLLBACK if state.channel == ROLLBACK else channel_for(percent)
    new_tags = {TAG_PERCENT: str(percent), TAG_CHANNEL: channel, TAG_UPDATED: now_iso(),
                TAG_PROMOTED_BY: actor, TAG_PROMOTE_REASON: reason or f"widened to {percent} %"}
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
    verdict = tags.get(TAG_GATE_VERDICT, mv.tags.get(TAG_GATE_VERDICT, ""))
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
    client = configure_mlflow(settings)
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
    if mv.tags.get(TAG_DECISION) == "rejected":
        raise RolloutError(f"{where}: v{target} was rejected in review "
                           f"({mv.tags.get(TAG_REASON, '')!r}); refusing to roll back to it")
    if export_record(settings, family, athlete_id, target) is None:
        raise RolloutError(f"{where}: v{target} has no export, so it cannot be shipped")

    stamp = now_iso()
    target_keys = [TAG_SET_BY, TAG_SET_AT, TAG_SET_REASON, TAG_SET_ACTOR, TAG_PREVIOUS,
                   TAG_PERCENT, TAG_CHANNEL, TAG_UPDATED, TAG_ROLLED_BACK_FROM]
    target_before = dict(mv.tags)
    mark_champion(client, name, target, previous=None, set_by=ROLLBACK, reason=reason,
                  actor=actor, percent=100, channel=ROLLBACK)
    client.set_model_version_tag(name, target, TAG_ROLLED_BACK_FROM, current)
    try:
        path = publish_athlete(settings, athlete_id, client)
    except Exception:
        client.set_registered_model_alias(name, CHAMPION, current)
        _restore_tags(client, name, target, target_before, target_keys)
        raise
    for key, value in {TAG_ROLLED_BACK: "true", TAG_ROLLED_BACK_AT: stamp,
                       TAG_ROLLED_BACK_REASON: reason[:4000], TAG_ROLLED_BACK_BY: actor,
                       TAG_ROLLED_BACK_TO: target}.items():
        client.set_model_version_tag(name, current, key, value)
    return {"athlete_id": athlete_id, "family": family, "from_version": current,
            "to_version": target, "reason": reason, "actor": actor, "at": stamp,
            "manifest": str(path) if path else None}
