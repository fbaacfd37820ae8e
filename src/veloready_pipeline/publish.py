"""Export registered models and publish signed OTA manifests.

Only registered versions (they passed their gates) are exported. Each export lands in
``<data_dir>/exports/<family>/<athlete>/v<version>/`` with an ``export.json`` record;
an existing record means the work is done (re-runs are free and safe). Manifests
advertise, per athlete, each family's *champion* version, so a version that was
registered but did not beat the champion is exported but not shipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veloready_pipeline.config import Settings
from veloready_pipeline.fsio import atomic_write_text
from veloready_pipeline.results import ModelResult

RECORD = "export.json"


def export_dir(settings: Settings, family: str, athlete_id: str, version: str) -> Path:
    """Where one registered version's exported files live (`ids.athlete_key` folder)."""
    from veloready_pipeline.ids import athlete_key

    return (settings.resolve(settings.paths.data_dir) / "exports" / family
            / athlete_key(athlete_id) / f"v{version}")


def _artifact_dict(art: Any) -> dict[str, Any]:
    d = asdict(art) if is_dataclass(art) else dict(art)
    d["path"] = str(d["path"])
    return d


def export_recovery(result: ModelResult, out_dir: Path, name: str) -> dict[str, Any]:
    """Float32 Core ML tree ensemble + ONNX, with parity checked on the test rows."""
    from veloready_pipeline.export.coreml import export_xgboost

    sample = np.asarray(result.test_X, dtype=np.float32)
    # The rider's own baseline constants: the app computes the relative inputs with them.
    meta = ({"veloready.athlete_baseline": json.dumps(result.extra["athlete_baseline"],
                                                      sort_keys=True)}
            if result.extra.get("athlete_baseline") else None)
    arts = export_xgboost(result.model, result.feature_names, out_dir, name, sample,
                          metadata=meta)
    return {
        "family": result.family,
        "shipped": "coreml",
        "quantization": "float32",
        "artifacts": {k: _artifact_dict(v) for k, v in arts.items()},
        "gate_metrics": {k: float(v) for k, v in result.metrics.items()},
    }


def export_registered(
    results: Iterable[ModelResult], outcomes: Iterable[Any], settings: Settings
) -> dict[tuple[str, str], dict[str, Any]]:
    """Export every registered version not exported yet; returns records by (athlete, family).

    A failed export is recorded (``error``) and never shipped; the others go on. The
    conversions (~2 s of CPU per network: Core ML float32 + quantized variants, ONNX,
    parity checks) run in ``execution.local_workers`` local processes when there are
    enough of them; the MLflow writes and the records stay in this process (one
    writer), in the same order either way.
    """
    by_key = {(r.athlete_id, r.family): r for r in results}
    records: dict[tuple[str, str], dict[str, Any]] = {}
    jobs: list[tuple[Any, ModelResult, Path, str]] = []
    for out in outcomes:
        if out.version is None:
            continue
        key = (out.athlete_id, out.family)
        result = by_key.get(key)
        folder = export_dir(settings, out.family, out.athlete_id, out.version)
        record_path = folder / RECORD
        if record_path.exists():
            records[key] = json.loads(record_path.read_text())
            continue
        if result is None:
            continue
        if folder.exists():
            # Files without their record: an export interrupted by a crash. Start clean.
            import shutil

            shutil.rmtree(folder)
        jobs.append((out, result, folder, out.registered_name or f"{out.family}-{out.athlete_id}"))
    done = _run_exports([(r, folder, name, settings) for _, r, folder, name in jobs], settings)
    client = None
    for (out, _, folder, _), rec in zip(jobs, done, strict=True):
        key, record_path = (out.athlete_id, out.family), folder / RECORD
        if "error" in rec:
            records[key] = rec
            continue
        rec |= {"athlete_id": out.athlete_id, "registry_name": out.registered_name,
                "registry_version": out.version}
        # An undefined metric (e.g. a personal AUROC on a test part without an event) is
        # NaN; the signed manifest is strict JSON, so it travels as null.
        rec["gate_metrics"] = {k: (float(v) if v is not None and np.isfinite(v) else None)
                               for k, v in rec.get("gate_metrics", {}).items()}
        if out.run_id and rec.get("variants"):
            from veloready_pipeline.registry import configure_mlflow, log_export_variants

            client = client or configure_mlflow(settings)
            log_export_variants(settings, out.run_id, rec, client=client)
        atomic_write_text(record_path, json.dumps(rec, indent=2, default=str))
        records[key] = rec
    return records


def export_one(result: ModelResult, folder: Path, name: str,
               settings: Settings) -> dict[str, Any]:
    """Export one registered model's files; an error comes back as ``{"error": ...}``."""
    try:
        if result.family == "recovery":
            return export_recovery(result, folder, name)
        from veloready_pipeline.models.nets import export_net

        return export_net(result, folder, name, settings)
    except Exception as exc:  # noqa: BLE001 - recorded; the model is not shipped
        return {"family": result.family, "error": f"{type(exc).__name__}: {exc}"}


def _export_star(job: tuple[ModelResult, Path, str, Settings]) -> dict[str, Any]:
    return export_one(*job)


def _quiet_threads(torch_threads: int) -> None:
    # Few threads per export process (read by torch/OpenMP when first imported): the
    # conversions are small, extra threads only spin against the other processes.
    import os

    os.environ["OMP_NUM_THREADS"] = str(torch_threads)
    _freeze_imports()


def _freeze_imports() -> None:
    """Import the converters, then move every object alive so far out of the GC's view.

    ``coremltools.convert`` calls ``gc.collect()`` once per model; with torch,
    coremltools and onnx loaded that full collection walks ~10^6 long-lived module
    objects (~0.4 s, a third of a small net's conversion). Frozen objects are still
    freed by reference counting; only the cycle collector skips them.
    """
    import gc

    from veloready_pipeline.logs import quiet_coremltools

    quiet_coremltools()
    import coremltools  # noqa: F401
    import onnx  # noqa: F401
    import torch  # noqa: F401

    gc.collect()
    gc.freeze()


MIN_EXPORTS_PER_PROCESS = 4  # below this, starting processes costs more than it saves


def _run_exports(jobs: list[tuple[ModelResult, Path, str, Settings]],
                 settings: Settings) -> list[dict[str, Any]]:
    """Run `export_one` for every job, in local processes when that pays; same order."""
    workers = min(settings.execution.local_workers, len(jobs) // MIN_EXPORTS_PER_PROCESS)
    if workers <= 1:
        import gc

        if jobs:
            _freeze_imports()
        try:
            return [_export_star(job) for job in jobs]
        finally:
            gc.unfreeze()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

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


def _champion_record(settings: Settings, family: str, athlete_id: str,
                     version: str) -> dict[str, Any] | None:
    path = export_dir(settings, family, athlete_id, version) / RECORD
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    return None if "error" in rec else rec


def manifest_entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The OTA entries of one exported version: the shipped Core ML file plus ONNX."""
    entries = []
    shipped = record["artifacts"][record["shipped"]]
    for art in (shipped, record["artifacts"].get("onnx")):
        if art is None:
            continue
        entries.append({
            "family": record["family"],
            "registry_name": record["registry_name"],
            "registry_version": record["registry_version"],
            "kind": art["kind"],
            "variant": art["variant"],
            "path": art["path"],
            "input_names": art["input_names"],
            "input_shapes": art["input_shapes"],
            "output_names": art["output_names"],
            "output_shapes": art["output_shapes"],
            "gate_metrics": record.get("gate_metrics", {}),
        })
    return entries


def publish_manifests(
    exports: dict[tuple[str, str], dict[str, Any]], outcomes: Iterable[Any], settings: Settings
) -> dict[str, str]:
    """Write one signed manifest per athlete that has at least one exported champion.

    Besides this run's champions, athletes whose manifest is due for renewal (half of
    ``export.ota_validity_days`` passed, `ota.renewal_due`) are republished from the
    registry, so a champion keeps shipping while its athlete is not retrained (gate
    failed, skipped, quarantined) instead of expiring on the phone.
    """
    from veloready_pipeline.export.ota import renewal_due, write_manifest

    champions: dict[str, dict[str, str]] = {}
    for out in outcomes:
        if out.champion_version is not None:
            champions.setdefault(out.athlete_id, {})[out.family] = out.champion_version
    written: dict[str, str] = {}
    ota_dir = settings.resolve(settings.paths.ota_dir)
    key = settings.resolve(settings.paths.signing_key)
    from veloready_pipeline.rollout import manifest_content

    due = renewal_due(ota_dir, settings.export.ota_validity_days)
    for athlete_id in sorted(set(champions) | set(due)):
        # Every family's champion from the registry, with its staged rollout (percent,
        # previous version to fall back to) and the app's rule-based fallback in `extra`.
        entries, extra = manifest_content(settings, athlete_id)
        if not entries:
            continue
        path = write_manifest(ota_dir, athlete_id, entries, key,
                              minimum_ios=settings.export.minimum_ios, extra=extra,
                              validity_days=settings.export.ota_validity_days)
        written[athlete_id] = str(path)
    return written
