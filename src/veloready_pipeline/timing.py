"""Stage timing: where a weekly run's wall time goes, measured inside the work itself.

Why a file and not a logger: the benchmark (``bench/weekly_run.py``) needs per-stage
figures and the share of the run spent in Prefect orchestration, and the training
stage runs in other processes (Dask workers). Each timed block therefore appends one
JSON line - stage, start and end (epoch seconds, comparable across processes), CPU
seconds, pid and labels - to the file named by ``VELOREADY_TIMING_FILE``. Unset (the
default, and in production) nothing is written and a timed block costs one
environment lookup. Lines are short and appended with ``O_APPEND`` in one ``write``,
so concurrent processes never interleave a line.

``level`` 0 marks top-level stages (disjoint parts of a run: ingest, train chunks,
register ...); ``level`` 1 marks parts inside them (features, tune, fit, gate), which
the benchmark reports but never adds to the top-level total.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

ENV = "VELOREADY_TIMING_FILE"
F = TypeVar("F", bound=Callable[..., Any])


def timing_file() -> str | None:
    """The file timing records go to, or None when timing is off."""
    return os.environ.get(ENV) or None


def write_record(path: str, record: dict[str, Any]) -> None:
    """Append one JSON line (a single ``write`` on an ``O_APPEND`` descriptor)."""
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@contextmanager
def time_stage(stage: str, level: int = 0, **labels: Any) -> Iterator[None]:
    """Time the enclosed block as ``stage`` (no-op unless ``VELOREADY_TIMING_FILE`` is set)."""
    path = timing_file()
    if path is None:
        yield
        return
    start, cpu = time.time(), time.process_time()
    try:
        yield
    finally:
        write_record(path, {"stage": stage, "level": level, "start": start, "end": time.time(),
                            "cpu": time.process_time() - cpu, "pid": os.getpid(), **labels})


class StageTotals:
    """Per-stage sums inside one chunk, written as one record per stage at the end.

    Sub-stages of a per-athlete loop (features, tune, fit, gate) would otherwise write
    one line per athlete and stage; summing them first keeps the file small.
    """

    def __init__(self) -> None:
        self.enabled = timing_file() is not None
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.count: dict[str, int] = {}

    @contextmanager
    def part(self, stage: str) -> Iterator[None]:
        """Add the enclosed block's wall and CPU time to ``stage``."""
        if not self.enabled:
            yield
            return
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[stage] = self.wall.get(stage, 0.0) + time.perf_counter() - t
            self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - c
            self.count[stage] = self.count.get(stage, 0) + 1

    def flush(self, **labels: Any) -> None:
        """Write one level-1 record per stage (sums; ``start``/``end`` span the sum)."""
        path = timing_file()
        if path is None:
            return
        now = time.time()
        for stage, wall in self.wall.items():
            write_record(path, {"stage": stage, "level": 1, "start": now - wall, "end": now,
                                "cpu": self.cpu[stage], "pid": os.getpid(),
                                "count": self.count[stage], **labels})
        self.wall.clear()
        self.cpu.clear()
        self.count.clear()


def timed(stage: str, level: int = 0, **labels: Any) -> Callable[[F], F]:
    """Decorator form of `time_stage` for a whole stage function."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with time_stage(stage, level, **labels):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def read_records(path: str) -> list[dict[str, Any]]:
    """Every record in a timing file (an absent file means no records)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: time when any of them ran."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total
