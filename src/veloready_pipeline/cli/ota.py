"""`veloready ota verify | promote`: check manifests as the app does, widen a rollout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from veloready_pipeline.cli import common

ota_app = typer.Typer(no_args_is_help=True, help="OTA manifests for the app.")


def promote(
    athlete: str = typer.Argument(..., help="athlete id"),
    family: str = typer.Argument(..., help="recovery | zones | injury"),
    percent: int = typer.Option(..., "--percent", help="new share of devices, 1..100"),
    reason: str = typer.Option("", "--reason", help="why (kept on the version)"),
    by: str | None = typer.Option(None, "--by", help="who (default: $USER)"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """Widen a champion's staged rollout and re-sign the athlete's manifest."""
    from veloready_pipeline.export.ota import (
        OTAVerificationError,
        load_public_key,
        public_key_path,
        verify_path,
    )
    from veloready_pipeline.lifecycle.rollout import RolloutError, promote_rollout

    common.quiet_warnings()
    settings = common.load(config)
    try:
        out = promote_rollout(settings, athlete, family, percent, actor=common.who(by),
                              reason=reason)
    except RolloutError as exc:
        typer.secho(f"promote refused: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    try:
        # With the configured key (the one that just signed it), never the embedded one.
        trusted = load_public_key(public_key_path(settings.resolve(settings.paths.signing_key)))
        rep = verify_path(Path(out["manifest"]), trusted)[0]
    except OTAVerificationError as exc:
        typer.secho(f"re-signed manifest does not verify: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{athlete} {family} v{out['version']}: {out['from_percent']} % -> "
               f"{out['percent']} % ({out['channel']}); manifest re-signed (sequence "
               f"{rep.sequence}, expires {rep.expires_at}) and verified: {out['manifest']}")


def _refuse(message: str) -> typer.Exit:
    typer.secho(f"ota verify: {message}", fg="red", err=True)
    return typer.Exit(2)


def _trusted_key(public_key: Path | None, integrity_only: bool,
                 config: Path | None) -> tuple[Path | None, bool, Any]:
    """The trusted key's path, whether the check is integrity only, the loaded key."""
    from veloready_pipeline.export.ota import load_public_key, public_key_path

    if public_key is None:
        settings = common.load(config)
        candidate = public_key_path(settings.resolve(settings.paths.signing_key))
        if candidate.exists():
            public_key = candidate
            if integrity_only:
                typer.echo(f"--integrity-only ignored: the configured key {candidate} is "
                           "trusted, so identity is checked too")
                integrity_only = False
        elif not integrity_only:
            raise _refuse(
                f"no trusted public key: --public-key not given and {candidate} (the "
                "configured signing key's public half) does not exist, so who signed the "
                "manifests cannot be proven. Pass --public-key PEM, or --integrity-only to "
                "check file hashes against the embedded keys (exit 3, never 0).")
    elif integrity_only:
        raise _refuse("--integrity-only and --public-key exclude each other")
    trusted = None
    if public_key is not None:
        try:
            trusted = load_public_key(public_key)
        except (OSError, ValueError) as exc:
            raise _refuse(f"--public-key {public_key}: not an Ed25519 PEM key ({exc})") \
                from exc
    return public_key, integrity_only, trusted


def _print_tree(tree: Any, public_key: Path | None, trusted: Any, state: Path) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    for rep in tree.reports:
        left = (dt.datetime.fromisoformat(rep.expires_at.replace("Z", "+00:00")) - now)
        files = ", ".join(f"{f['file']} ({f['size_bytes']} B)" for f in rep.files)
        typer.echo(f"ok  {rep.manifest}: athlete {rep.athlete_id}, sequence {rep.sequence}, "
                   f"expires {rep.expires_at} (in {left.total_seconds() / 86400:.1f} days); "
                   f"{files}")
    for problem in tree.problems:
        typer.secho(f"OTA verification FAILED: {problem}", fg="red", err=True)
    key_note = (f"trusted key {public_key}" if trusted is not None
                else "embedded keys (INTEGRITY ONLY: identity not proven)")
    typer.echo(f"{len(tree.reports)} manifest(s) verified with {key_note}; "
               f"{len(tree.problems)} problem(s); state {state}"
               + (f" (recorded: {', '.join(tree.recorded)})" if tree.recorded else ""))


def verify(
    path: Path = typer.Argument(..., help="an OTA root, an athlete folder or a manifest"),
    public_key: Path | None = typer.Option(
        None, "--public-key",
        help="trusted Ed25519 public key (PEM); default: the configured signing key's "
             "public half (paths.signing_key -> <stem>.pub.pem) when it exists"),
    integrity_only: bool = typer.Option(
        False, "--integrity-only",
        help="without a trusted key, check against the key embedded in each signature "
             "file: proves nothing about who signed; exits 3 even when every check passes"),
    state: Path | None = typer.Option(
        None, "--state",
        help="last accepted sequence per athlete (JSON); default <root>.accepted.json "
             "next to the OTA root, e.g. data/ota.accepted.json"),
    record: bool = typer.Option(True, "--record/--no-record",
                                help="write the sequences that passed to --state"),
    config: Path | None = typer.Option(None, "--config", help="YAML settings file"),
) -> None:
    """Check manifests as the app does; exit 1 on any problem, 2 without a trusted key.

    Per athlete: signature with the trusted key, athlete id = folder, sequence not below
    the last accepted (--state) or issued one, not expired, every file's size and
    hashes, no unlisted file; for a root also athletes whose manifest is gone.
    """
    from veloready_pipeline.export.ota import (
        MANIFEST_NAME,
        OTAStateError,
        OTAVerificationError,
        accepted_state_path,
        verify_tree,
    )

    public_key, integrity_only, trusted = _trusted_key(public_key, integrity_only, config)
    if not path.exists():
        raise _refuse(f"{path}: no such file or folder")
    root = (path.parent.parent if path.is_file()
            else path.parent if (path / MANIFEST_NAME).is_file() else path)
    state = state or accepted_state_path(root)
    if integrity_only:
        typer.secho("WARNING: --integrity-only: signatures are checked against the key "
                    "embedded in each signature file, which anyone can make; WHO signed is "
                    "NOT proven, and nothing is recorded in the state file.",
                    fg="yellow", err=True)
    try:
        tree = verify_tree(path, trusted, state_path=state, record=record)
    except OTAStateError as exc:
        raise _refuse(str(exc)) from exc
    except OSError as exc:  # e.g. the state file's folder is not writable
        raise _refuse(f"{exc.filename or state}: {exc.strerror or exc}") from exc
    except OTAVerificationError as exc:
        typer.secho(f"OTA verification FAILED: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc
    _print_tree(tree, public_key, trusted, state)
    if tree.problems:
        raise typer.Exit(1)
    if trusted is None:
        typer.secho("integrity only: exit 3 (not 0) because identity is not proven",
                    fg="yellow", err=True)
        raise typer.Exit(3)


ota_app.command("promote")(promote)
ota_app.command("verify")(verify)
