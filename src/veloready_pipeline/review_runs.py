"""Weekly runs paused for a reviewer, on the Prefect server: the form, finding, resuming.

A weekly run in ``review_mode: manual`` pauses until a reviewer answers with a
`ReviewInput` (the Prefect UI shows it as a form; ``veloready registry review`` sends
the same input). Used by the flow's review stage (``tasks/review.py``) and by the CLI,
which never imports ``tasks`` or ``flows``. Prefect is imported when this module is.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.input import RunInput
from pydantic import Field


class ReviewInput(RunInput):
    """The reviewer's answer (the form the Prefect UI shows on a paused weekly run)."""

    decision: Literal["approve_all", "approve_listed", "reject"] = Field(
        description="approve_all, approve_listed (the athletes below) or reject "
        "(the athletes below, or every pending challenger when none is listed)")
    athletes: list[str] = Field(default_factory=list, description="athlete ids")
    reason: str = Field(default="", description="why (required to reject)")
    reviewer: str = Field(default="", description="who decides")


def has_api() -> bool:
    """Whether a Prefect server is configured (PREFECT_API_URL): runs can pause."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def find_paused_reviews(flow_name: str = "weekly-training") -> list[dict[str, Any]]:
    """Flow runs of ``flow_name`` that are paused (waiting for a reviewer), newest first.

    Returns an empty list when no Prefect server is configured.
    """
    if not has_api():
        return []
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
        )
    runs = sorted(runs, key=lambda r: str(r.created or ""), reverse=True)
    return [{"id": str(r.id), "name": r.name, "created": str(r.created)} for r in runs]


def resume_review(flow_run_id: str, answer: dict[str, Any]) -> None:
    """Resume a paused weekly run with a reviewer's answer (validated by the server)."""
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run

    ReviewInput(**answer)  # same validation as the UI form, before anything is sent
    resume_flow_run(UUID(flow_run_id), run_input=answer)
