"""Convert registered models to their shipped files (Core ML + ONNX), here or in processes.

The CPU-heavy part of the export stage, kept apart from `lifecycle.publish` so that the
local worker processes `run_exports` starts (``spawn``: each imports this module) load
the converters and nothing of MLflow: the records and the MLflow writes stay with the
caller. Each model's family exports it (`families.base.ModelFamily.export`).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from veloready_pipeline.config import Settings
from veloready_pipeline.families import FAMILIES
from veloready_pipeline.logs import quiet_coremltools
from veloready_pipeline.results import ModelResult

MIN_EXPORTS_PER_PROCESS = 4  # below this, starting processes costs more than it saves

ExportJob = tuple[ModelResult, Path, str, Settings]


def export_one(result: ModelResult, folder: Path, name: str,
               settings: Settings) -> dict[str, Any]:
    """Export one registered model's files; an error comes back as ``{"error": ...}``."""
    try:
        return FAMILIES.get(result.family).export(result, folder, name, settings)
    except Exception as exc:  # noqa: BLE001 - recorded; the model is not shipped
        return {"family": result.family, "error": f"{type(exc).__name__}: {exc}"}


def _export_star(job: ExportJob) -> dict[str, Any]:
    return export_one(*job)


def _quiet_threads(torch_threads: int) -> None:
    # Few threads per export process (read by torch/OpenMP when first imported): the
    # conversions are small, extra threads only spin against the other processes.
    os.environ["OMP_NUM_THREADS"] = str(torch_threads)
    _freeze_imports()


def _freeze_imports() -> None:
    """Import the converters, then move every object alive so far out of the GC's view.

    ``coremltools.convert`` calls ``gc.collect()`` once per model; with torch,
    coremltools and onnx loaded that full collection walks ~10^6 long-lived module
    objects (~0.4 s, a third of a small net's conversion). Frozen objects are still
    freed by reference counting; only the cycle collector skips them.
    """
    quiet_coremltools()
    # Imported here, not at the top: the converters are heavy optional libraries only
    # the export stage needs (importing this module must stay cheap).
    import coremltools  # noqa: F401
    import onnx  # noqa: F401
    import torch  # noqa: F401

    gc.collect()
    gc.freeze()


def run_exports(jobs: list[ExportJob], settings: Settings) -> list[dict[str, Any]]:
    """Run `export_one` for every job, in local processes when that pays; same order."""
    workers = min(settings.execution.local_workers, len(jobs) // MIN_EXPORTS_PER_PROCESS)
    if workers <= 1:
        if jobs:
            _freeze_imports()
        try:
            return [_export_star(job) for job in jobs]
        finally:
            gc.unfreeze()
    out: list[dict[str, Any]] = []
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet_threads,
                                 initargs=(settings.execution.torch_threads,)) as pool:
            for rec in pool.map(_export_star, jobs):
                out.append(rec)
    except BrokenProcessPool:
        # A process died (e.g. killed for memory): finish the rest here, one by one.
        out += [_export_star(job) for job in jobs[len(out):]]
    return out
