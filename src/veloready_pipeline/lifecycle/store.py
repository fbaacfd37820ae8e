"""The MLflow store of the lifecycle: client set-up, model names, aliases and tag names.

The lowest registry module of `veloready_pipeline.lifecycle`: every other lifecycle
module reads and writes the registry with the names defined here, so the ``champion``
alias is looked up in one place (`alias_version`) and a champion move or a review
decision is written by one function each (`mark_champion`, `champion_tags`,
`decision_tags`).

Version tags:

* review decision (`decision_tags`): ``review_decision`` (``approved``, ``rejected``,
  ``auto_promoted``, ``auto_kept``), ``reviewer``, ``reviewed_at``, ``reason``,
  ``review_source`` (``auto``, ``prefect-ui``, ``cli``);
* champion move (`champion_tags`): ``champion_set_by`` (``auto`` / ``review`` /
  ``rollback``), ``champion_set_at``, ``champion_set_reason``, ``champion_set_actor``,
  ``previous_champion_version`` (what devices outside the rollout, and a rollback,
  use), ``rollout_percent``, ``rollout_channel`` (``staged`` below 100 %, ``stable`` at
  100 %, ``rollback`` after a rollback) and ``rollout_updated_at``;
* registration: ``champion_decision`` (the champion comparison), the same-test losses,
  ``registration_withdrawn``; rollout changes: ``promoted_by``/``promote_reason`` and the
  ``rolled_back*`` tags.

A champion without the champion-move tags (registered before rollouts existed) counts
as a stable champion at 100 % with no previous version (`champion_state`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow
from veloready_pipeline.config import Settings
from veloready_pipeline.ids import athlete_key

EXPERIMENT = "veloready-weekly-training"

# Aliases of a registered model.
CHAMPION = "champion"
CHALLENGER = "challenger"

# Review decision tags.
TAG_DECISION = "review_decision"
TAG_REVIEWER = "reviewer"
TAG_REVIEWED_AT = "reviewed_at"
TAG_REASON = "reason"
TAG_REVIEW_SOURCE = "review_source"
# Champion-move and rollout tags.
TAG_SET_BY = "champion_set_by"
TAG_SET_AT = "champion_set_at"
TAG_SET_REASON = "champion_set_reason"
TAG_SET_ACTOR = "champion_set_actor"
TAG_PREVIOUS = "previous_champion_version"
TAG_PERCENT = "rollout_percent"
TAG_CHANNEL = "rollout_channel"
TAG_UPDATED = "rollout_updated_at"
TAG_PROMOTED_BY = "promoted_by"
TAG_PROMOTE_REASON = "promote_reason"
# Rollback tags (on the withdrawn champion, and the restored one's origin).
TAG_ROLLED_BACK = "rolled_back"
TAG_ROLLED_BACK_AT = "rolled_back_at"
TAG_ROLLED_BACK_REASON = "rolled_back_reason"
TAG_ROLLED_BACK_BY = "rolled_back_by"
TAG_ROLLED_BACK_TO = "rolled_back_to"
TAG_ROLLED_BACK_FROM = "rolled_back_from"
# Registration tags the review and the crash repair read.
TAG_CHAMPION_DECISION = "champion_decision"
TAG_NEW_LOSS = "new_loss_same_test"
TAG_CHAMPION_LOSS = "champion_loss_same_test"
TAG_GATE_VERDICT = "gate_verdict"
TAG_WITHDRAWN = "registration_withdrawn"

# Rollout channels.
STAGED, STABLE, ROLLBACK = "staged", "stable", "rollback"

# MLflow 3's UI opens an experiment in its GenAI view (traces) unless the experiment
# says it is model training: the `mlflow.experimentKind` tag picks the training view
# (runs, metrics, models).
TRAINING_EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def registered_name(settings: Settings, family: str, athlete_id: str) -> str:
    """The registered model's name, findable by a person: ``veloready-recovery-sim-0001``.

    The athlete part is `ids.athlete_key` (a plain id as it is, any other id as a slug
    plus a hash of the exact id), so ``x y`` and ``x-y`` never share a model.
    """
    return f"{settings.registry_prefix}-{family}-{athlete_key(athlete_id)}"


class _RegistryClient(MlflowClient):
    """An `MlflowClient` that checks "is this name a prompt?" once per name, not per write.

    MLflow 3 re-reads the whole registered model (versions, tags, aliases) before every
    version-tag or alias write to refuse prompts. Registering one version writes ~15 of
    them, so the repeated check cost more than the writes themselves (19 reads, ~175 ms
    of CPU per model here). A name found not to be a prompt stays so for the run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._checked_not_prompt: set[str] = set()

    def _raise_if_prompt(self, name: str) -> None:
        if name in self._checked_not_prompt:
            return
        super()._raise_if_prompt(name)
        self._checked_not_prompt.add(name)


def configure_mlflow(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store and make sure the experiment exists."""
    uri = settings.mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client, experiment = _connect(uri)
    if experiment is None:
        root = settings.mlflow_artifact_root()
        try:
            client.create_experiment(EXPERIMENT, artifact_location=f"{root}/{EXPERIMENT}",
                                     tags=TRAINING_EXPERIMENT_TAGS)
        except MlflowException:
            pass  # created concurrently by another writer
    else:
        mark_training_experiment(client, experiment)
    mlflow.set_experiment(EXPERIMENT)
    return client


def mark_training_experiment(client: MlflowClient, experiment: Any) -> None:
    """Tag an experiment created before the tag existed (once; a no-op afterwards)."""
    tags = getattr(experiment, "tags", None) or {}
    for key, value in TRAINING_EXPERIMENT_TAGS.items():
        if tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def _connect(uri: str, attempts: int = 6) -> tuple[MlflowClient, Any]:
    """A client and the experiment (or None), retrying while another process creates
    MLflow's schema.

    The first client on an empty PostgreSQL database creates MLflow's tables; parallel
    workers starting together race on that and the losers fail ("already exists").
    Retrying after a pause (the tables then exist) makes a cold start by several
    writers safe.
    """
    for attempt in range(attempts):
        try:
            client = _RegistryClient(tracking_uri=uri, registry_uri=uri)
            return client, client.get_experiment_by_name(EXPERIMENT)
        except Exception:  # noqa: BLE001 - re-raised after the last attempt
            if attempt == attempts - 1:
                raise
            time.sleep(1.0 * (attempt + 1))
    raise AssertionError("unreachable")


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias (`CHAMPION`, `CHALLENGER`) of ``name`` points at, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def model_aliases(client: MlflowClient, settings: Settings, family: str,
                  athlete_id: str) -> dict[str, str]:
    """The ``champion``/``challenger`` aliases of one athlete's model ({} if none)."""
    try:
        model = client.get_registered_model(registered_name(settings, family, athlete_id))
    except MlflowException:
        return {}
    aliases = getattr(model, "aliases", None) or {}
    return {a: str(v) for a, v in sorted(aliases.items()) if a in (CHAMPION, CHALLENGER)}


def now_iso() -> str:
    """UTC timestamp used in every decision tag."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def channel_for(percent: int) -> str:
    """``stable`` at 100 %, ``staged`` below."""
    return STABLE if percent >= 100 else STAGED


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


def mark_champion(client: MlflowClient, name: str, version: str, *, previous: str | None,
                  set_by: str, reason: str, actor: str, percent: int,
                  channel: str | None = None) -> None:
    """Point ``champion`` at a version and record who moved it, why, and its rollout."""
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in champion_tags(previous=previous, set_by=set_by, reason=reason,
                                    actor=actor, percent=percent, channel=channel).items():
        client.set_model_version_tag(name, version, key, value)


def decision_tags(*, decision: str, reviewer: str, reason: str, source: str) -> dict[str, str]:
    """The version tags that record a review decision."""
    return {TAG_DECISION: decision, TAG_REVIEWER: reviewer, TAG_REVIEWED_AT: now_iso(),
            TAG_REASON: reason[:4000], TAG_REVIEW_SOURCE: source}


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


def champion_state(client: MlflowClient, settings: Settings, athlete_id: str,
                   family: str) -> ChampionState | None:
    """The champion and rollout of one athlete's family, or None without a champion."""
    name = registered_name(settings, family, athlete_id)
    version = alias_version(client, name, CHAMPION)
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
