"""Atomic file writes: a reader sees the old content or the new one, never half of it.

Every writer of the pipeline (run summaries, reports, export records, OTA manifests
and published files, model files, simulated data, quarantine reports) goes through
`atomic_write_with` or its two wrappers: a temporary file in the same folder, flushed
and synced, then ``os.replace`` over the target; on any error the temporary file is
removed. A directory (a Core ML ``.mlpackage``) is swapped in by `replace_dir`.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write_with(path: Path, writer: Callable[[Path], object], *,
                      mode: int | None = None, keep_if_identical: bool = False) -> bool:
    """Let ``writer`` fill a temporary file beside ``path``, then move it into place.

    For libraries that write a file themselves (pandas, ONNX, a zip, a copy).
    ``mode``: the permission bits of the result (default: the temporary file's, 0o600).
    ``keep_if_identical``: leave ``path`` untouched when it already holds the same bytes
    (idempotent re-publication). Returns whether ``path`` was replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if keep_if_identical and path.is_file() and filecmp.cmp(tmp, path, shallow=False):
            tmp.unlink()
            return False
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return True


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically (synced temporary file + ``os.replace``)."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data), mode=mode)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def replace_dir(src: Path, dest: Path) -> None:
    """Move directory ``src`` to ``dest``, replacing an existing ``dest`` with one rename.

    ``os.replace`` cannot overwrite a non-empty directory, so an existing ``dest`` is
    first renamed aside; readers see either the old or the new directory, never a mix.
    """
    aside = None
    if dest.exists():
        aside = dest.with_name(f".{dest.name}.old.{os.getpid()}")
        os.replace(dest, aside)
    os.replace(src, dest)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
