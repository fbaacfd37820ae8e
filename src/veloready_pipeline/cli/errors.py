"""How every `veloready` command ends: one line on stderr, the right exit code.

A user mistake (a setting, option, file or date) ends in one line naming it and exit
code 2; any other error in one line with its type and exit code 1; ``--debug`` anywhere
on the command line adds the traceback. Failed checks (OTA, review) keep their own
codes. Child processes (Prefect's ephemeral API server) end with the command, however
it ends (`veloready_pipeline.childguard`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

import typer


class UserError(Exception):
    """A user mistake (setting, option, file, date): one line naming it, exit code 2."""


# Exceptions that are user mistakes wherever they are raised (by name, so that checking
# them imports nothing heavy): one line and exit code 2.
USER_ERROR_NAMES = frozenset({"UserError", "ConfigError", "SourceDetectionError",
                              "NoDataError"})
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# Commands whose flows may start child processes (Prefect's ephemeral server, Dask).
CHILD_COMMANDS = frozenset({"train", "backfill", "main", "monitor", "briefs", "registry"})
_GUARD: list[subprocess.Popen[bytes]] = []


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user mistake (exit code 2)."""
    return isinstance(exc, USER_OS_ERRORS) or any(
        t.__name__ in USER_ERROR_NAMES for t in type(exc).__mro__)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def strip_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (before any ``--``), and whether it was there."""
    cut = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:cut] if a != "--debug"]
    return head + argv[cut:], len(head) != cut


def start_child_guard() -> None:
    """Start the watchdog that ends this process's children if it is killed."""
    if _GUARD or not Path("/proc/self/stat").exists():
        return
    from veloready_pipeline import childguard

    try:
        _GUARD.append(subprocess.Popen(
            [sys.executable, "-I", "-S", childguard.__file__, str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True))
    except OSError:  # no watchdog is no reason to refuse the run
        pass


def fail(message: str, code: int, exc: BaseException | None, debug: bool) -> NoReturn:
    """Print ``error: message`` (after the traceback with ``--debug``) and exit ``code``."""
    if debug and exc is not None:
        traceback.print_exception(exc)
    typer.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _fail_on(exc: Exception, debug: bool) -> NoReturn:
    """The one line and exit code for an exception a command raised."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        sys.exit(int(getattr(exc, "exit_code", 2)))  # the help is already shown
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        # a usage error found by the option parser (unknown option, bad value)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        fail(" ".join(exc.format_message().split()) + hint, int(exc.exit_code), exc, debug)
    if is_user_error(exc):
        fail(one_line(exc), 2, exc, debug)
    fail(f"{type(exc).__name__}: {one_line(exc)}"
         + ("" if debug else " (run again with --debug for the traceback)"), 1, exc, debug)


class VeloreadyApp(typer.Typer):
    """The ``veloready`` entry point: every error ends in one line; ``--debug`` adds the
    traceback. User mistakes exit 2, failed checks (OTA, review) keep their codes."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raw = kwargs.pop("args", None)
        argv = list(raw if raw is not None else (args[0] if args else sys.argv[1:]))
        argv, debug = strip_debug(argv)
        command = next((a for a in argv if not a.startswith("-")), None)
        if command in CHILD_COMMANDS:
            start_child_guard()
        try:
            rv = typer.main.get_command(self).main(
                args=argv, prog_name=kwargs.pop("prog_name", "veloready"),
                standalone_mode=False)
        except SystemExit:
            raise
        except typer.Abort as exc:
            fail("aborted", 1, exc, debug)
        except Exception as exc:  # noqa: BLE001 - the one place errors become one line
            _fail_on(exc, debug)
        sys.exit(rv if isinstance(rv, int) else 0)
