"""Atomic file writes: a reader sees the old content or the new one, never half of it.

Every writer of the pipeline (run summaries, reports, export records, OTA manifests,
model files, simulated data, quarantine reports) goes through `atomic_write_bytes` or
one of its two wrappers: a temporary file in the same folder, flushed and synced, then
``os.replace`` over the target; on any error the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write_with(path: Path, writer: Callable[[Path], object], *,
                      mode: int | None = None) -> None:
    """Let ``writer`` fill a temporary file beside ``path``, then move it into place.

    For libraries that write a file themselves (pandas, ONNX, ...). ``mode``: the
    permission bits of the result (default: the temporary file's, 0o600).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (synced temporary file + ``os.replace``)."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
