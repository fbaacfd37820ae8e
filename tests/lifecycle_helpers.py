"""The weekly flow's lifecycle stages without Prefect, and a snapshot of what they leave.

`run_week` calls the stages in the flow's order (register -> alias -> review -> export
-> sign -> summary); `snapshot` reads back the registry, the runs, the export records
and the signed manifests in a form that does not depend on run ids or timestamps, so
an interrupted-then-repaired home can be compared with an uninterrupted one.

Run as a script (``python tests/lifecycle_helpers.py RESULTS.pkl WORKDIR KILL_AT``) it
runs one week from pickled results and kills itself with SIGKILL at ``KILL_AT``
(a real kill -9: no ``finally``, no run termination); ``python tests/lifecycle_helpers.py
veloready train ...`` runs the real command line and kills it (SIGKILL) right after the
first model version is created, before its alias.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from veloready_pipeline.config import Settings, load_settings
from veloready_pipeline.export.ota import load_public_key, public_key_path, verify_path
from veloready_pipeline.lifecycle.manifests import RECORD
from veloready_pipeline.lifecycle.publish import export_registered, publish_manifests
from veloready_pipeline.lifecycle.registry import KnownRuns, register_results
from veloready_pipeline.lifecycle.review import shippable
from veloready_pipeline.lifecycle.store import EXPERIMENT
from veloready_pipeline.plots import model_svg
from veloready_pipeline.summary import summary_rows
from veloready_pipeline.training import score_model


def run_week(results: list[Any], settings: Settings, workdir: Path,
             data_hash: str) -> list[dict[str, Any]]:
    """register (+ aliases) -> export -> sign -> summary rows, as the weekly flow does."""
    # in two chunks, with the runs carried between them, as the flow registers
    known = KnownRuns(data_hash)
    outcomes = [o for chunk in (results[:1], results[1:])
                for o in register_results(chunk, settings, data_hash=data_hash,
                                          lineage={"source": "test"}, score_fn=score_model,
                                          plot_fn=model_svg, workdir=workdir,
                                          known_runs=known)]
    exports = export_registered(results, shippable(outcomes), settings)
    manifests = publish_manifests(outcomes, settings)
    by_key = {(o.athlete_id, o.family): o for o in outcomes}
    return summary_rows(results, by_key, exports, {}, ["recovery"], manifests)


def snapshot(settings: Settings) -> dict[str, Any]:
    """Registry, runs, exports and manifests, without ids, times or absolute paths."""
    uri = settings.mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the global registry URI
    models = {}
    for rm in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{rm.name}'")
        aliases = {v: a for a, v in (rm.aliases or {}).items()}
        models[rm.name] = sorted(
            (int(v.version), v.tags.get("fingerprint"), v.tags.get("review_decision"),
             v.tags.get("previous_champion_version"), aliases.get(v.version),
             "registration_withdrawn" in v.tags)
            for v in versions)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = sorted(
        (r.info.run_name, r.info.status, r.data.tags.get("fingerprint"),
         tuple(sorted(r.data.metrics)), tuple(sorted(r.data.params)),
         tuple(sorted(a.path for a in client.list_artifacts(r.info.run_id))))
        for r in client.search_runs([exp.experiment_id]))
    data = settings.resolve(settings.paths.data_dir)
    exports = {}
    for rec_path in sorted((data / "exports").rglob(RECORD)):
        rec = json.loads(rec_path.read_text())
        exports[rec_path.parent.relative_to(data).as_posix()] = (
            rec.get("shipped"), rec.get("registry_version"),
            sorted(Path(a["path"]).relative_to(data).as_posix()
                   for a in rec.get("artifacts", {}).values()),
            sorted(p.name for p in rec_path.parent.iterdir()))
    ota = settings.resolve(settings.paths.ota_dir)
    manifests = {}
    if any(ota.rglob("manifest.json*")):
        key = load_public_key(public_key_path(settings.resolve(settings.paths.signing_key)))
        for report in verify_path(ota, key):  # raises on a missing or bad signature
            body = json.loads(report.manifest.read_text())
            manifests[report.manifest.relative_to(ota).as_posix()] = (
                body["athlete_id"],
                sorted((m["family"], m["registry_version"], m["role"], m["variant"], m["file"],
                        m["sha256"]) for m in body["models"]),
                {f: (b["champion_version"], b["previous_version"], b["percent"])
                 for f, b in body.get("rollout", {}).items()})
    return {"models": models, "runs": runs, "exports": exports, "manifests": manifests}


KILL_POINTS = ("after_version_created",)


def _kill_after_version_created() -> None:
    from veloready_pipeline.lifecycle import registry

    original = registry._create_version

    def create_then_die(*args: Any, **kwargs: Any) -> Any:
        mv = original(*args, **kwargs)
        # straight to the stderr descriptor: a flow's print() goes through its logger
        os.write(2, f"kill -9 after creating {args[1]} v{mv.version}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
        return mv

    registry._create_version = create_then_die


if __name__ == "__main__":
    if sys.argv[1] == "veloready":  # the real CLI, killed after the first version
        _kill_after_version_created()
        from veloready_pipeline.cli import app

        app(sys.argv[2:])
    results_pkl, workdir, kill_at = sys.argv[1:4]
    if kill_at == "after_version_created":
        _kill_after_version_created()
    with open(results_pkl, "rb") as fh:
        week_results, week_hash = pickle.load(fh)
    run_week(week_results, load_settings(), Path(workdir), week_hash)
    sys.exit(0)
