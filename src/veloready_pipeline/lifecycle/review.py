"""Challenger review: who decides that a passing model reaches athletes, and why.

Every newly registered (gate-passing) version awaiting a decision is its model's
``challenger`` (MLflow alias); the decision removes it (in ``auto`` mode the decision
comes with the registration, so the alias is never set).

* ``review_mode: auto`` - the registry decides at once with the champion rule (the
  challenger becomes champion only when it beats the current champion on the same test
  data) and `auto_decision_tags` gives the decision tags with reviewer ``auto``.
* ``review_mode: manual`` - nothing moves; the weekly flow shows the pending challengers
  next to their champions and pauses for a reviewer (Prefect UI or
  ``veloready registry review``); `apply_decision` records the decision.

Every decision, automatic or human, is kept as tags on the model version:
``review_decision`` (``approved``, ``rejected``, ``auto_promoted``, ``auto_kept``),
``reviewer``, ``reviewed_at``, ``reason`` and ``review_source`` (``auto``, ``prefect-ui``,
``cli``). An approved challenger becomes champion at the configured initial rollout
percentage (see `veloready_pipeline.lifecycle.rollout`); the tag names and the
functions that write them live in `veloready_pipeline.lifecycle.store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from veloready_pipeline.config import Settings
from veloready_pipeline.lifecycle.store import (
    CHALLENGER,
    CHAMPION,
    TAG_CHAMPION_DECISION,
    TAG_CHAMPION_LOSS,
    TAG_DECISION,
    TAG_GATE_VERDICT,
    TAG_NEW_LOSS,
    TAG_REASON,
    TAG_REVIEWER,
    alias_version,
    champion_tags,
    configure_mlflow,
    decision_tags,
    mark_champion,
)

DecisionKind = Literal["approve_all", "approve_listed", "reject"]
DECISIONS: tuple[str, ...] = ("approve_all", "approve_listed", "reject")
METRIC_ORDER = ("rmse", "mae", "r2", "auroc", "brier", "val_rmse")


class ReviewError(ValueError):
    """A review decision that cannot be applied; the message names athlete and rule."""


@dataclass
class ReviewDecision:
    """A reviewer's answer to the pending challengers.

    Attributes:
        decision: ``approve_all``, ``approve_listed`` (the ``athletes``) or ``reject``
            (the ``athletes``, or every pending challenger when none is listed).
        athletes: athlete ids the decision names.
        reason: why; required for a rejection.
        reviewer: who decided.
    """

    decision: str
    athletes: list[str] = field(default_factory=list)
    reason: str = ""
    reviewer: str = ""

    def validate(self) -> ReviewDecision:
        """Check the decision is complete before anything is written.

        Raises:
            ReviewError: naming the missing or invalid field.
        """
        if self.decision not in DECISIONS:
            raise ReviewError(f"review decision must be one of {DECISIONS}, "
                              f"got {self.decision!r}")
        if self.decision == "approve_listed" and not self.athletes:
            raise ReviewError("decision approve_listed needs at least one athlete")
        if self.decision == "reject" and not self.reason.strip():
            raise ReviewError("a rejection needs a reason")
        if not self.reviewer.strip():
            raise ReviewError("a review decision needs a reviewer name")
        return self

    def verdict_for(self, athlete_id: str) -> str | None:
        """``approved``, ``rejected`` or None (left pending) for one athlete."""
        listed = athlete_id in self.athletes
        if self.decision == "approve_all" or (self.decision == "approve_listed" and listed):
            return "approved"
        if self.decision == "reject" and (listed or not self.athletes):
            return "rejected"
        return None


@dataclass
class Challenger:
    """A pending challenger and what a reviewer needs to judge it."""

    athlete_id: str
    family: str
    name: str
    version: str
    run_id: str
    flow_run_id: str
    metrics: dict[str, float]
    baselines: dict[str, float]
    gate_verdict: str
    recommendation: str
    champion_version: str | None
    champion_metrics: dict[str, float]
    new_loss_same_test: float | None
    champion_loss_same_test: float | None
    data_window: str
    plot_uri: str = ""


def _tag_metrics(tags: dict[str, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tags.items():
        if key.startswith("metric."):
            try:
                out[key.removeprefix("metric.")] = float(value)
            except ValueError:
                continue
    return out


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _challenger(client: MlflowClient, name: str, version: str) -> Challenger | None:
    """The review record of a version, or None if it is not pending."""
    mv = client.get_model_version(name, version)
    if TAG_DECISION in mv.tags:
        return None
    run_id = mv.run_id or mv.tags.get("run_id", "")
    run_tags: dict[str, str] = {}
    run_metrics: dict[str, float] = {}
    plot_uri = ""
    if run_id:
        try:
            run = client.get_run(run_id)
            run_tags, run_metrics = dict(run.data.tags), dict(run.data.metrics)
            plots = [a.path for a in client.list_artifacts(run_id)
                     if a.path.endswith((".png", ".svg"))]
            plot_uri = f"{run.info.artifact_uri}/{plots[0]}" if plots else ""
        except MlflowException:
            pass
    champ = alias_version(client, name, CHAMPION)
    champ_metrics = (_tag_metrics(client.get_model_version(name, champ).tags)
                     if champ is not None else {})
    metrics = _tag_metrics(mv.tags) or {k: v for k, v in run_metrics.items()
                                        if not k.startswith("baseline_")}
    return Challenger(
        athlete_id=run_tags.get("athlete_id", name),
        family=run_tags.get("family", ""),
        name=name,
        version=str(version),
        run_id=run_id,
        flow_run_id=run_tags.get("prefect_flow_run_id", ""),
        metrics=metrics,
        baselines={k.removeprefix("baseline_"): v for k, v in run_metrics.items()
                   if k.startswith("baseline_")},
        gate_verdict=mv.tags.get(TAG_GATE_VERDICT, ""),
        recommendation=mv.tags.get(TAG_CHAMPION_DECISION, ""),
        champion_version=champ,
        champion_metrics=champ_metrics,
        new_loss_same_test=_float(mv.tags.get(TAG_NEW_LOSS)),
        champion_loss_same_test=_float(mv.tags.get(TAG_CHAMPION_LOSS)),
        data_window=f"{run_tags.get('data_start', '?')} .. {run_tags.get('data_end', '?')}",
        plot_uri=plot_uri,
    )


def pending_challengers(settings: Settings, *, client: MlflowClient | None = None,
                        athletes: Sequence[str] | None = None,
                        families: Sequence[str] | None = None) -> list[Challenger]:
    """Every challenger awaiting a decision, across the whole registry.

    Args:
        athletes: keep only these athletes.
        families: keep only these families.
    """
    client = client or configure_mlflow(settings)
    prefix = settings.registry_prefix
    out: list[Challenger] = []
    token = None
    while True:
        page = client.search_registered_models(
            filter_string=f"name LIKE '{prefix}-%'", max_results=1000, page_token=token)
        for rm in page:
            version = (rm.aliases or {}).get(CHALLENGER)
            if version is None:
                continue
            ch = _challenger(client, rm.name, str(version))
            if ch is None:
                continue
            if athletes and ch.athlete_id not in athletes:
                continue
            if families and ch.family not in families:
                continue
            out.append(ch)
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda c: (c.athlete_id, c.family))


def challengers_of(outcomes: Iterable[Any], settings: Settings,
                   client: MlflowClient | None = None) -> list[Challenger]:
    """The pending challengers among one run's registry outcomes."""
    client = client or configure_mlflow(settings)
    out = []
    for o in outcomes:
        if o.version is None or o.registered_name is None:
            continue
        if alias_version(client, o.registered_name, CHALLENGER) != str(o.version):
            continue
        ch = _challenger(client, o.registered_name, str(o.version))
        if ch is not None:
            out.append(ch)
    return sorted(out, key=lambda c: (c.athlete_id, c.family))


def _write_decision(client: MlflowClient, name: str, version: str, *, decision: str,
                    reviewer: str, reason: str, source: str) -> None:
    for key, value in decision_tags(decision=decision, reviewer=reviewer, reason=reason,
                                    source=source).items():
        client.set_model_version_tag(name, version, key, value)
    if alias_version(client, name, CHALLENGER) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)


def auto_decision_tags(outcome: Any, settings: Settings) -> dict[str, str]:
    """Tags of an automatic (``review_mode: auto``) decision made by the champion rule.

    Written with the new version itself (one registry write, not one per tag): the
    decision tags and, when the version becomes champion, the rollout tags
    `veloready_pipeline.lifecycle.store.mark_champion` would write.
    """
    decision = "auto_promoted" if outcome.champion else "auto_kept"
    tags: dict[str, str] = {}
    if outcome.champion:
        tags |= champion_tags(previous=outcome.previous_champion, set_by="auto",
                              reason=outcome.decision, actor="auto",
                              percent=settings.rollout.initial_percent)
    tags |= decision_tags(decision=decision, reviewer="auto", reason=outcome.decision,
                          source="auto")
    outcome.review_decision = decision
    return tags


@dataclass
class AppliedDecision:
    """What a decision did to one challenger."""

    athlete_id: str
    family: str
    name: str
    version: str
    verdict: str  # approved | rejected | pending | skipped
    champion_version: str | None
    note: str = ""


def check_listed(decision: ReviewDecision, pending: Sequence[Challenger]) -> None:
    """Every listed athlete must have a pending challenger (catches typos before writes).

    Raises:
        ReviewError: naming the athletes without one.
    """
    have = {c.athlete_id for c in pending}
    unknown = sorted(set(decision.athletes) - have)
    if unknown:
        raise ReviewError("no pending challenger for athlete(s): " + ", ".join(unknown)
                          + (f" (pending: {', '.join(sorted(have))})" if have else
                             " (nothing is pending)"))


def apply_decision(settings: Settings, decision: ReviewDecision,
                   pending: Sequence[Challenger], *, source: str,
                   client: MlflowClient | None = None,
                   can_ship: Any = None) -> list[AppliedDecision]:
    """Record a reviewer's decision on pending challengers and move ``champion``.

    Each challenger is re-checked first: one that another reviewer (or the CLI) decided
    meanwhile is skipped, so applying the same decision twice changes nothing.

    Args:
        decision: the validated decision.
        pending: the challengers it applies to.
        source: ``prefect-ui`` or ``cli`` (kept in the ``review_source`` tag).
        can_ship: optional ``Challenger -> str | None``; a returned message blocks the
            approval of that challenger (e.g. it has no export to publish).
    """
    decision.validate()
    client = client or configure_mlflow(settings)
    applied: list[AppliedDecision] = []
    for ch in pending:
        verdict = decision.verdict_for(ch.athlete_id)
        current = alias_version(client, ch.name, CHAMPION)
        if verdict is None:
            applied.append(AppliedDecision(ch.athlete_id, ch.family, ch.name, ch.version,
                                           "pending", current, "not named: left pending"))
            continue
        if TAG_DECISION in client.get_model_version(ch.name, ch.version).tags:
            applied.append(AppliedDecision(ch.athlete_id, ch.family, ch.name, ch.version,
                                           "skipped", current, "already decided"))
            continue
        reason = decision.reason or f"{verdict} by {decision.reviewer}"
        if verdict == "approved":
            blocked = can_ship(ch) if can_ship is not None else None
            if blocked:
                applied.append(AppliedDecision(ch.athlete_id, ch.family, ch.name, ch.version,
                                               "pending", current, blocked))
                continue
            mark_champion(client, ch.name, ch.version, previous=current, set_by="review",
                          reason=reason, actor=decision.reviewer,
                          percent=settings.rollout.initial_percent)
            current = ch.version
        _write_decision(client, ch.name, ch.version, decision=verdict,
                        reviewer=decision.reviewer, reason=reason, source=source)
        applied.append(AppliedDecision(ch.athlete_id, ch.family, ch.name, ch.version,
                                       verdict, current))
    return applied


def refresh_outcomes(outcomes: Iterable[Any], settings: Settings,
                     client: MlflowClient | None = None) -> list[Any]:
    """Bring a run's registry outcomes up to date after a review (champion, decision)."""
    client = client or configure_mlflow(settings)
    out = []
    for o in outcomes:
        if o.registered_name is not None:
            o.champion_version = alias_version(client, o.registered_name, CHAMPION)
            o.champion = o.version is not None and o.champion_version == str(o.version)
            challenger = alias_version(client, o.registered_name, CHALLENGER)
            o.challenger = o.version is not None and challenger == str(o.version)
            if o.version is not None:
                tags = client.get_model_version(o.registered_name, str(o.version)).tags
                o.review_decision = tags.get(TAG_DECISION, "pending")
                if o.review_decision in ("approved", "rejected"):
                    o.decision = (f"{o.review_decision} by {tags.get(TAG_REVIEWER, '?')}: "
                                  f"{tags.get(TAG_REASON, '')}")
        out.append(o)
    return out


def shippable(outcomes: Iterable[Any]) -> list[Any]:
    """Outcomes whose version may be exported: everything except rejected challengers.

    Pending challengers are exported (not published) so a later approval from the
    command line can ship them without retraining; manifests only ever advertise
    champions.
    """
    return [o for o in outcomes if o.review_decision != "rejected"]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def review_markdown(pending: Sequence[Challenger], *, flow_run_id: str | None = None,
                    timeout_s: int | None = None) -> str:
    """The pending challengers next to their champions, as Markdown (artifact and CLI)."""
    lines = ["# Challengers awaiting review", ""]
    if flow_run_id:
        lines += [f"Weekly run `{flow_run_id}` is paused for a decision"
                  + (f" (gives up after {timeout_s} s)" if timeout_s else "") + ". Resume it "
                  "in the Prefect UI (approve_all / approve_listed / reject, with a reason) "
                  "or run `veloready registry review --approve-all | --approve A,B | "
                  "--reject A --reason ... --reviewer NAME`.", ""]
    lines += [
        "| athlete | family | version | rmse | mae | r2 | persistence rmse | mean rmse "
        "| champion | champion rmse | champion mae | same-test loss new / champion "
        "| recommendation | residuals |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in pending:
        same = (f"{_fmt(c.new_loss_same_test)} / {_fmt(c.champion_loss_same_test)}"
                if c.champion_loss_same_test is not None else _fmt(c.new_loss_same_test))
        lines.append(
            f"| {c.athlete_id} | {c.family} | v{c.version} | {_fmt(c.metrics.get('rmse'))} "
            f"| {_fmt(c.metrics.get('mae'))} | {_fmt(c.metrics.get('r2'))} "
            f"| {_fmt(c.baselines.get('persistence_rmse'))} "
            f"| {_fmt(c.baselines.get('mean_rmse'))} "
            f"| {('v' + c.champion_version) if c.champion_version else 'none (rules)'} "
            f"| {_fmt(c.champion_metrics.get('rmse'))} | {_fmt(c.champion_metrics.get('mae'))} "
            f"| {same} | {c.recommendation.removeprefix('pending review: ')[:140]} "
            f"| {f'[plot]({c.plot_uri})' if c.plot_uri else ''} |")
    if not pending:
        lines.append("\n_Nothing is pending._")
    return "\n".join(lines)
