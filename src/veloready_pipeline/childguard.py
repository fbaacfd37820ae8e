"""Child processes end with their parent, however the parent ends.

The CLI's flows start child processes it does not control: Prefect's ephemeral API
server (``python -m uvicorn ... prefect.server.api.server:create_app``, started by
Prefect's client on first use and stopped only by an ``atexit`` hook), Dask workers.
A parent killed with SIGKILL (or SIGTERM, which skips ``atexit`` too) leaves them
running: ~230 MB for the Prefect server. ``PR_SET_PDEATHSIG`` cannot be set on a
process Prefect spawns, and it fires when the spawning *thread* ends, not the process.

So the CLI starts this small watchdog (standard library only, no site packages)::

    python -I -S childguard.py PARENT_PID

While the parent lives, the watchdog notes the parent's children (pid + start time
from ``/proc``, once a second, and at once when the parent ends: it waits on a pidfd).
When the parent is gone it sends SIGTERM to each noted child still alive with the same
start time (a recycled pid is never signalled), then SIGKILL after a grace period. It
ignores SIGINT and SIGHUP (a Ctrl-C or a closed terminal ends the parent first; the
watchdog then cleans up) and exits at once when the parent exits normally with no
child left.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

POLL_S = 1.0
GRACE_S = 5.0


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[-1].split()
    if len(fields) < 20:
        return None
    return int(fields[1]), fields[19].decode()


def children(parent: int, me: int) -> dict[int, str]:
    """The parent's live children (except this watchdog): pid -> start time."""
    out: dict[int, str] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        info = _stat(int(name))
        if info is not None and info[0] == parent:
            out[int(name)] = info[1]
    return out


def _alive(pid: int, start: str) -> bool:
    info = _stat(pid)
    return info is not None and info[1] == start


def _signal_all(known: dict[int, str], sig: int) -> None:
    for pid, start in known.items():
        if _alive(pid, start):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def end_children(known: dict[int, str], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM every noted child still alive, SIGKILL what is left after ``grace_s``."""
    targets = {pid: st for pid, st in known.items() if _alive(pid, st)}
    _signal_all(targets, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in targets.items()):
        time.sleep(0.1)
    _signal_all(targets, signal.SIGKILL)
    return sorted(targets)


def watch(parent: int, poll_s: float = POLL_S) -> list[int]:
    """Note the parent's children until it ends, then end them; returns their pids."""
    me = os.getpid()
    try:
        pidfd: int | None = os.pidfd_open(parent)
    except (AttributeError, OSError):
        pidfd = None
    known: dict[int, str] = {}
    while os.getppid() == parent:
        current = children(parent, me)
        known = {p: s for p, s in known.items() if _alive(p, s)} | current
        if pidfd is not None:
            ready, _, _ = select.select([pidfd], [], [], poll_s)
            if ready:
                break
        else:
            time.sleep(poll_s)
    # The parent is gone (its children are re-parented by now, or are about to be):
    # one last look cannot see them any more, so the noted set is what we end.
    return end_children(known)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watch(int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
