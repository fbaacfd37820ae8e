"""`veloready registry review | rollback`.

* ``registry review`` lists the challengers awaiting review (metrics next to the
  champion's) and, with ``--approve-all`` / ``--approve A,B`` / ``--reject A --reason``,
  records the decision on the model versions. If a weekly run is paused waiting for
  that decision, it is resumed with it and goes on to export and publish; otherwise
  the approved champions' manifests are republished here.
* ``registry rollback ATHLETE FAMILY [--to VERSION] --reason ...`` moves ``champion``
  back and republishes the signed manifest; refusals exit with status 1.

Heavy modules (MLflow, Prefect) are imported inside the commands so ``--help`` stays
fast and nothing happens at import time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from veloready_pipeline.cli import common

registry_app = typer.Typer(no_args_is_help=True,
                           help="Model registry: review challengers, roll back champions.")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _print_pending(pending: list[Any]) -> None:
    if not pending:
        typer.echo("no challengers are pending review")
        return
    typer.echo(f"{len(pending)} challenger(s) pending review:")
    for c in pending:
        champ = (f"champion v{c.champion_version}: rmse {_fmt(c.champion_metrics.get('rmse'))} "
                 f"mae {_fmt(c.champion_metrics.get('mae'))}" if c.champion_version
                 else "no champion (app uses rules)")
        typer.echo(
            f"  {c.athlete_id:<14} {c.family:<9} v{c.version:<4} "
            f"rmse {_fmt(c.metrics.get('rmse'))} mae {_fmt(c.metrics.get('mae'))} "
            f"r2 {_fmt(c.metrics.get('r2'))} | baselines persistence "
            f"{_fmt(c.baselines.get('persistence_rmse'))} mean "
            f"{_fmt(c.baselines.get('mean_rmse'))} | {champ}")
        if c.recommendation:
            typer.echo(f"  {'':<14} {c.recommendation}")


def _paused_runs(flow_run: str | None) -> list[dict[str, Any]]:
    """The paused weekly runs (only ``flow_run`` when given; exit 2 if it is not one)."""
    from veloready_pipeline.review_runs import find_paused_reviews

    paused = find_paused_reviews()
    if flow_run:
        paused = [r for r in paused if r["id"] == flow_run]
        if not paused:
            typer.secho(f"flow run {flow_run} is not a paused weekly-training run", fg="red",
                        err=True)
            raise typer.Exit(2)
    return paused


def _apply(settings: Any, decisions: list[Any], pending: list[Any],
           paused_ids: set[str]) -> tuple[list[Any], bool]:
    """Record the decisions; print each one; whether any approval was left pending."""
    from veloready_pipeline.lifecycle import review

    def can_ship(ch: Any) -> str | None:
        from veloready_pipeline.lifecycle.manifests import export_record

        if ch.flow_run_id in paused_ids:
            return None  # the resumed run exports and publishes it
        if export_record(settings, ch.family, ch.athlete_id, ch.version) is None:
            return (f"v{ch.version} has no export (its weekly run did not export it), so it "
                    "cannot be shipped; retrain it with `veloready train`")
        return None

    applied = []
    for d in decisions:
        applied += review.apply_decision(settings, d, pending, source="cli", can_ship=can_ship)
    blocked = False
    for a in applied:
        if a.verdict in ("approved", "rejected") or (a.verdict == "pending" and a.note !=
                                                      "not named: left pending"):
            colour = "red" if a.verdict == "pending" else None
            typer.secho(f"{a.athlete_id} {a.family} v{a.version}: {a.verdict}"
                        + (f" ({a.note})" if a.note else ""), fg=colour)
            blocked |= a.verdict == "pending"
    return applied, blocked


def _resume(paused: list[dict[str, Any]], flow_run: str | None, applied: list[Any],
            pending: list[Any], decisions: list[Any]) -> None:
    """Resume the paused runs whose challengers were decided (or ``--flow-run``)."""
    from veloready_pipeline.review_runs import resume_review

    decided_runs = {ch.flow_run_id for ch in pending
                    for a in applied if a.verdict in ("approved", "rejected")
                    and (a.name, a.version) == (ch.name, ch.version)}
    to_resume = paused if flow_run else [r for r in paused if r["id"] in decided_runs]
    answer = _answer(decisions)
    for run in to_resume:
        resume_review(run["id"], answer)
        typer.echo(f"resumed paused weekly run {run['id']} ({run['name']}) with "
                   f"{json.dumps(answer)}; it exports and publishes the approved models")
    if not paused:
        typer.echo("no weekly run is paused for review: decisions recorded in the registry")


def review_command(
    approve_all: bool = typer.Option(False, "--approve-all", help="approve every challenger"),
    approve: str | None = typer.Option(None, "--approve", help="ATHLETE[,ATHLETE...]"),
    reject: str | None = typer.Option(None, "--reject", help="ATHLETE[,ATHLETE...]"),
    reason: str | None = typer.Option(None, "--reason",
                                      help="why (required to reject; with --approve and "
                                      "--reject it explains the rejection)"),
    reviewer: str | None = typer.Option(None, "--reviewer", help="who decides (default: $USER)"),
    family: str | None = typer.Option(None, "--family", help="only this family"),
    flow_run: str | None = typer.Option(None, "--flow-run",
                                        help="resume this paused run (default: the runs "
                                        "whose challengers were decided)"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """List challengers pending review; approve or reject them and resume a paused run."""
    common.quiet_warnings()
    settings = common.load(config)  # before the registry's imports: fails fast
    from veloready_pipeline.lifecycle import review

    families = [family] if family else None
    pending = review.pending_challengers(settings, families=families)
    _print_pending(pending)
    if not (approve_all or approve or reject):
        return
    decisions = _decisions(approve_all, common.csv(approve) or [], common.csv(reject) or [],
                           reason, common.who(reviewer))
    try:
        for d in decisions:
            d.validate()
            if d.athletes:
                review.check_listed(d, pending)
    except review.ReviewError as exc:
        typer.secho(f"review refused: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc

    paused = _paused_runs(flow_run)
    paused_ids = {r["id"] for r in paused}
    applied, blocked = _apply(settings, decisions, pending, paused_ids)
    _resume(paused, flow_run, applied, pending, decisions)
    _publish_direct(settings, applied, pending, paused_ids)
    if blocked:
        raise typer.Exit(1)


def _decisions(approve_all: bool, approve: list[str], reject: list[str], reason: str | None,
               reviewer: str) -> list[Any]:
    from veloready_pipeline.lifecycle.review import ReviewDecision

    if approve_all and approve:
        typer.secho("use either --approve-all or --approve, not both", fg="red", err=True)
        raise typer.Exit(2)
    if approve_all and reject:
        typer.secho("--approve-all approves everything: drop --reject or list approvals",
                    fg="red", err=True)
        raise typer.Exit(2)
    both = sorted(set(approve) & set(reject))
    if both:
        typer.secho(f"athlete(s) both approved and rejected: {', '.join(both)}", fg="red",
                    err=True)
        raise typer.Exit(2)
    out = []
    if reject:  # rejections first: an approval never races a rejection
        out.append(ReviewDecision("reject", reject, reason or "", reviewer))
    # With both, --reason explains the rejection; approvals then read "approved by ...".
    approve_reason = "" if reject else (reason or "")
    if approve_all:
        out.append(ReviewDecision("approve_all", [], approve_reason, reviewer))
    elif approve:
        out.append(ReviewDecision("approve_listed", approve, approve_reason, reviewer))
    return out


def _answer(decisions: list[Any]) -> dict[str, Any]:
    """The run input sent to a paused run: the approval if any, else the rejection."""
    main = decisions[-1]
    return {"decision": main.decision, "athletes": list(main.athletes),
            "reason": main.reason, "reviewer": main.reviewer}


def _publish_direct(settings: Any, applied: list[Any], pending: list[Any],
                    paused_ids: set[str]) -> None:
    """Republish manifests of approvals no paused run will publish."""
    from veloready_pipeline.lifecycle.publish import publish_athlete

    by_key = {(c.name, c.version): c for c in pending}
    athletes = sorted({a.athlete_id for a in applied if a.verdict == "approved"
                       and by_key[(a.name, a.version)].flow_run_id not in paused_ids})
    for aid in athletes:
        path = publish_athlete(settings, aid)
        typer.echo(f"published {path}" if path else f"{aid}: nothing exported to publish")


def rollback_command(
    athlete: str = typer.Argument(..., help="athlete id"),
    family: str = typer.Argument(..., help="recovery | zones | injury"),
    to: str | None = typer.Option(None, "--to", help="version (default: the previous champion)"),
    reason: str = typer.Option(..., "--reason", help="why (kept on both versions)"),
    by: str | None = typer.Option(None, "--by", help="who (default: $USER)"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """Move an athlete's champion back and republish the signed manifest."""
    common.quiet_warnings()
    settings = common.load(config)  # before the registry's imports: fails fast
    from veloready_pipeline.lifecycle.rollout import RolloutError, rollback_champion

    try:
        out = rollback_champion(settings, athlete, family, reason=reason,
                                actor=common.who(by), to_version=to)
    except RolloutError as exc:
        typer.secho(f"rollback refused: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{athlete} {family}: champion v{out['from_version']} -> v{out['to_version']} "
               f"(100 %, channel rollback); reason: {reason}")
    typer.echo(f"manifest: {out['manifest']}")


registry_app.command("review")(review_command)
registry_app.command("rollback")(rollback_command)
