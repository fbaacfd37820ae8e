"""Export registered models and publish signed OTA manifests.

Only registered versions (they passed their gates) are exported. Each export lands in
``<data_dir>/exports/<family>/<athlete>/v<version>/`` with an ``export.json`` record
(`lifecycle.manifests`); an existing record means the work is done (re-runs are free and
safe). Manifests advertise, per athlete, each family's *champion* version as the
registry holds it, so a version that was registered but did not beat the champion is
exported but not shipped.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from veloready_pipeline.config import Settings
from veloready_pipeline.export.ota import renewal_due, write_manifest
from veloready_pipeline.families import FAMILIES
from veloready_pipeline.fsio import atomic_write_text
from veloready_pipeline.lifecycle.convert import ExportJob, run_exports
from veloready_pipeline.lifecycle.manifests import (
    BUCKETING_RULE,
    RECORD,
    RULE_BASED_FALLBACK,
    export_dir,
    export_record,
    manifest_entries,
)
from veloready_pipeline.lifecycle.store import ChampionState, champion_state, configure_mlflow
from veloready_pipeline.results import ModelResult


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
            shutil.rmtree(folder)
        jobs.append((out, result, folder, out.registered_name or f"{out.family}-{out.athlete_id}"))
    export_jobs: list[ExportJob] = [(r, folder, name, settings) for _, r, folder, name in jobs]
    done = run_exports(export_jobs, settings)
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
            client = client or configure_mlflow(settings)
            log_export_variants(settings, out.run_id, rec, client=client)
        atomic_write_text(record_path, json.dumps(rec, indent=2, default=str))
        records[key] = rec
    return records


def log_export_variants(settings: Settings, run_id: str, record: dict[str, Any],
                        client: MlflowClient | None = None) -> None:
    """Record each exported variant's size and gate-metric change on the model's run."""
    client = client or configure_mlflow(settings)
    metrics = []
    for variant, info in record["variants"].items():
        metrics.append(Metric(f"export_{variant}_size_bytes", float(info["size_bytes"]), 0, 0))
        metrics.append(Metric(f"export_{variant}_size_ratio", float(info["size_ratio"]), 0, 0))
        metrics.append(Metric(f"export_{variant}_metric_change", float(info["metric_change"]),
                              0, 0))
        for k, v in info["metrics"].items():
            if v is not None and np.isfinite(v):
                metrics.append(Metric(f"export_{variant}_{k}", float(v), 0, 0))
    client.log_batch(run_id, metrics=metrics, tags=[
        RunTag("shipped_variant", str(record["shipped"])),
        RunTag("export_variants", json.dumps({v: {"passed": i["passed"], "verdict": i["verdict"]}
                                              for v, i in record["variants"].items()})),
    ])


def rollout_block(state: ChampionState) -> dict[str, Any]:
    """The ``rollout`` block of one family in the OTA manifest."""
    return {
        "registry_name": state.name,
        "champion_version": state.version,
        "channel": state.channel,
        "percent": state.percent,
        "previous_version": state.previous_version,
        "set_by": state.set_by,
        "set_at": state.set_at,
        "bucketing": BUCKETING_RULE,
    }


def manifest_content(settings: Settings, athlete_id: str,
                     client: MlflowClient | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Entries and the ``extra`` block of one athlete's manifest, rebuilt from the registry.

    Every family's champion is advertised with ``role: champion``; its previous champion
    (what devices outside the rollout keep) with ``role: previous`` when it was exported.
    A family whose champion has no export is left out and says so under ``rollout``:
    the app uses its rule-based fallback for it.
    """
    client = client or configure_mlflow(settings)
    entries: list[dict[str, Any]] = []
    blocks: dict[str, Any] = {}
    for family in FAMILIES.names():
        state = champion_state(client, settings, athlete_id, family)
        if state is None:
            continue
        rec = export_record(settings, family, athlete_id, state.version)
        block = rollout_block(state)
        if rec is None:
            blocks[family] = block | {"shipped": False,
                                      "note": "champion has no export: rule-based fallback"}
            continue
        entries.extend(manifest_entries(rec, "champion"))
        prev_rec = (export_record(settings, family, athlete_id, state.previous_version)
                    if state.previous_version else None)
        if prev_rec is not None:
            entries.extend(manifest_entries(prev_rec, "previous"))
        elif state.previous_version:
            block["previous_version"] = None
            block["note"] = (f"previous v{state.previous_version} has no export: devices "
                             "outside the rollout use the rule-based fallback")
        blocks[family] = block | {"shipped": True}
    extra = {"rollout": blocks, "fallback": RULE_BASED_FALLBACK}
    return entries, extra


def publish_athlete(settings: Settings, athlete_id: str,
                    client: MlflowClient | None = None) -> Path | None:
    """Rewrite (atomically, signed) one athlete's manifest from the registry.

    Returns:
        The manifest path, or None when the athlete has no exported champion (then any
        old manifest is left as it is and the caller reports it).
    """
    entries, extra = manifest_content(settings, athlete_id, client)
    if not entries:
        return None
    return Path(write_manifest(
        settings.resolve(settings.paths.ota_dir), athlete_id, entries,
        settings.resolve(settings.paths.signing_key),
        minimum_ios=settings.export.minimum_ios, extra=extra,
        validity_days=settings.export.ota_validity_days,
    ))


def publish_manifests(outcomes: Iterable[Any], settings: Settings) -> dict[str, str]:
    """Write one signed manifest per athlete that has a champion this run or is due.

    The athletes are those with a champion among this run's ``outcomes``, plus those
    whose manifest is due for renewal (half of ``export.ota_validity_days`` passed,
    `ota.renewal_due`), so a champion keeps shipping while its athlete is not retrained
    (gate failed, skipped, quarantined) instead of expiring on the phone. Each manifest
    is rebuilt from the registry and the export records on disk (`manifest_content`);
    an athlete without an exported champion gets none.
    """
    champions: set[str] = {out.athlete_id for out in outcomes
                           if out.champion_version is not None}
    written: dict[str, str] = {}
    ota_dir = settings.resolve(settings.paths.ota_dir)
    due = renewal_due(ota_dir, settings.export.ota_validity_days)
    for athlete_id in sorted(champions | set(due)):
        path = publish_athlete(settings, athlete_id)
        if path is not None:
            written[athlete_id] = str(path)
    return written
