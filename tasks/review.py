"""Prefect side of challenger review: the artifact, the pause for a reviewer, the decision.

`review_challengers` is called by the weekly flow between *register* and *export*. In
``review_mode: auto`` it does nothing (the registry already decided and tagged). In
``manual`` mode it publishes the pending challengers next to their champions as a
Markdown artifact, pauses the flow run until a reviewer answers (the Prefect UI shows
a form for `veloready_pipeline.review_runs.ReviewInput`; ``veloready registry review``
resumes the run with the same input), then records the decision on the model versions.

The pause runs in the flow itself (not in a task) because Prefect pauses flow runs.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.runtime import flow_run

from veloready_pipeline.config import Settings
from veloready_pipeline.lifecycle import review
from veloready_pipeline.review_runs import ReviewInput, has_api

PAUSE_KEY = "challenger-review"
MAX_ASKS = 3
FORM_ROWS = 50


@task(name="list-challengers", cache_policy=NO_CACHE)
def list_challengers(outcomes: list[Any], settings: Settings) -> list[review.Challenger]:
    """The pending challengers among this run's newly registered versions."""
    return review.challengers_of(outcomes, settings)


@task(name="apply-review-decision", cache_policy=NO_CACHE)
def apply_review_decision(answer: dict[str, Any], pending: list[review.Challenger],
                          outcomes: list[Any], settings: Settings) -> list[Any]:
    """Tag each challenger with the decision, move ``champion`` for approved ones."""
    decision = review.ReviewDecision(**answer)
    applied = review.apply_decision(settings, decision, pending, source="prefect-ui")
    logger = get_run_logger()
    for a in applied:
        logger.info("review: %s %s v%s -> %s %s", a.athlete_id, a.family, a.version,
                    a.verdict, a.note)
    return review.refresh_outcomes(outcomes, settings)


@task(name="refresh-review-state", cache_policy=NO_CACHE)
def refresh_review_state(outcomes: list[Any], settings: Settings) -> list[Any]:
    """Re-read champion and decisions from the registry (a reviewer may have acted)."""
    return review.refresh_outcomes(outcomes, settings)


def review_challengers(outcomes: list[Any], settings: Settings) -> list[Any]:
    """Stage "review" of the weekly flow; returns the outcomes with decisions applied.

    Without a Prefect server (local ephemeral mode) nobody could resume the run, so it
    does not pause: the challengers stay pending for ``veloready registry review``.
    """
    if settings.review_mode != "manual":
        return outcomes
    logger = get_run_logger()
    pending = list_challengers(outcomes, settings)
    if not pending:
        logger.info("review: no new challengers to review")
        return outcomes
    run_id = str(flow_run.get_id() or "local")
    markdown = review.review_markdown(pending, flow_run_id=run_id,
                                      timeout_s=settings.review_timeout_s)
    create_markdown_artifact(key="review-challengers", markdown=markdown,
                             description=f"{len(pending)} challengers awaiting review")
    if not has_api():
        logger.warning("review: %d challengers pending, but no Prefect server is configured "
                       "(PREFECT_API_URL) to pause for a reviewer; decide later with "
                       "`veloready registry review`", len(pending))
        return refresh_review_state(outcomes, settings)
    # The form's description holds a short table; the artifact holds all of them.
    description = markdown if len(pending) <= FORM_ROWS else (
        review.review_markdown(pending[:FORM_ROWS], flow_run_id=run_id)
        + f"\n\n... and {len(pending) - FORM_ROWS} more in the `review-challengers` artifact")
    for attempt in range(MAX_ASKS):
        logger.info("review: pausing for a decision on %d challengers", len(pending))
        try:
            answer = pause_flow_run(
                wait_for_input=ReviewInput.with_initial_data(description=description),
                timeout=settings.review_timeout_s, poll_interval=settings.review_poll_s,
                key=f"{PAUSE_KEY}-{attempt}")
        except FlowPauseTimeout:
            logger.warning("review: nobody decided within %d s; the challengers stay pending "
                           "(exported, not published) for `veloready registry review`",
                           settings.review_timeout_s)
            return refresh_review_state(outcomes, settings)
        data = {k: getattr(answer, k) for k in ("decision", "athletes", "reason", "reviewer")}
        data["reviewer"] = data["reviewer"].strip() or "prefect-ui"
        try:
            review.ReviewDecision(**data).validate()
        except review.ReviewError as exc:
            logger.error("review: invalid decision (%s); asking again", exc)
            description = f"**Invalid decision: {exc}.** Please answer again.\n\n{markdown}"
            continue
        unknown = sorted(set(data["athletes"]) - {c.athlete_id for c in pending})
        if unknown:
            logger.warning("review: %s have no pending challenger in this run (decided "
                           "elsewhere or a typo); ignored here", ", ".join(unknown))
        return apply_review_decision(data, pending, outcomes, settings)
    logger.error("review: no valid decision after %d answers; challengers stay pending",
                 MAX_ASKS)
    return refresh_review_state(outcomes, settings)


def shippable_outcomes(outcomes: list[Any]) -> list[Any]:
    """What the export stage may export: everything but rejected challengers."""
    return review.shippable(outcomes)
