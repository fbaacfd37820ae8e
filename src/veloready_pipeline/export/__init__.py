"""Export stage: Core ML and ONNX files of registered models, and OTA publication.

Modules:
    coreml: `export_xgboost` (float32 Core ML tree ensemble + ONNX, parity-checked) and
        `export_torch` (Core ML ML program in float32, 8-bit linear and 4-bit palettized
        variants, + ONNX, parity-checked).
    onnx_export: the ONNX halves of both and the ONNX Runtime parity helpers.
    quantize: the weights a quantized Core ML package really holds, read back from the
        package and mapped onto the PyTorch module, so gates are computed from them.
    ota: signed (Ed25519) per-athlete OTA manifests, atomic publication and verification.

This package file holds only what the modules share (the artifact record, the parity
error and the on-disk digest) and imports nothing heavy, so importing the package is
cheap and has no side effects.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ExportParityError", "ExportedArtifact", "digest_path", "size_path"]

_CHUNK = 1 << 20


class ExportParityError(RuntimeError):
    """An exported model does not reproduce the source model's predictions.

    Attributes:
        target: what was compared (e.g. ``"onnx vs xgboost"``).
        max_abs_diff: the largest absolute difference seen.
        tolerance: the allowed maximum.
    """

    def __init__(self, target: str, max_abs_diff: float, tolerance: float, detail: str = ""):
        self.target = target
        self.max_abs_diff = float(max_abs_diff)
        self.tolerance = float(tolerance)
        msg = (
            f"export parity failed for {target}: max abs diff {self.max_abs_diff:.3g} "
            f"> tolerance {self.tolerance:.3g}"
        )
        super().__init__(f"{msg} ({detail})" if detail else msg)


@dataclass
class ExportedArtifact:
    """One exported model file (or Core ML package directory) and its interface.

    ``extra`` carries measurements of the export itself (seconds taken, parity
    differences, which tensors were quantized) so callers can log them to MLflow.
    """

    kind: str
    variant: str
    path: Path
    size_bytes: int
    sha256: str
    input_names: list[str]
    input_shapes: list[list[int]]
    output_names: list[str]
    output_shapes: list[list[int]]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (path as a string)."""
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def _iter_files(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, absolute path) of every regular file under ``root``, sorted."""
    files = [p for p in root.rglob("*") if p.is_file()]
    return sorted((p.relative_to(root).as_posix(), p) for p in files)


def digest_path(path: Path) -> str:
    """SHA-256 of a file, or a deterministic digest of a directory (Core ML package).

    For a directory the digest is SHA-256 over, for each regular file in sorted order of
    its relative POSIX path: ``path bytes (UTF-8) + b"\\0" + 8-byte big-endian length +
    file bytes``. The length prefix makes the encoding unambiguous, and sorting makes the
    digest independent of the file system's listing order.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for rel, abs_path in _iter_files(path):
            data = abs_path.read_bytes()
            h.update(rel.encode("utf-8") + b"\0" + len(data).to_bytes(8, "big"))
            h.update(data)
        return h.hexdigest()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def size_path(path: Path) -> int:
    """Bytes on disk: the file size, or the sum over a directory's regular files."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for _, p in _iter_files(path))
    return path.stat().st_size
