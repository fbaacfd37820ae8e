"""MLflow tracking and model registry.

One MLflow run per athlete model (passing or not) with params, metrics, the gate
verdict, data window, lineage and a residual plot. Passing models are registered as a
version of the registered model ``<prefix>-<family>-<athlete>``; the ``champion``
alias moves to the new version only when it beats the current champion *on the same
test data* (the champion is re-scored on the new test part). A fingerprint of data
window, data hash, parameters, seed and code version makes re-runs idempotent: the
same work finds its existing run/version instead of registering a duplicate.

All writes happen from one process (SQLite allows a single writer); for parallel
writers use a PostgreSQL tracking URI.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow
from veloready_pipeline import __version__
from veloready_pipeline.config import Settings
from veloready_pipeline.results import ModelResult

EXPERIMENT = "veloready-weekly-training"
CHAMPION = "champion"
CHALLENGER = "challenger"
PIP_REQUIREMENTS = {
    "xgboost": ["xgboost-cpu==3.2.0"],
    "torch": ["torch==2.13.0"],
}


@dataclass
class RegistryOutcome:
    """What the registry did with one result."""

    athlete_id: str
    family: str
    run_id: str | None = None
    registered_name: str | None = None
    version: str | None = None
    champion: bool = False
    champion_version: str | None = None
    decision: str = ""
    reused: bool = False
    previous_champion: str | None = None
    review_decision: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)


def registered_name(settings: Settings, family: str, athlete_id: str) -> str:
    """The registered model's name, findable by a person: ``veloready-recovery-sim-0001``."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in athlete_id)
    return f"{settings.registry_prefix}-{family}-{safe}"


def configure_mlflow(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store and make sure the experiment exists."""
    uri = settings.mlflow_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if client.get_experiment_by_name(EXPERIMENT) is None:
        root = settings.mlflow_artifact_root()
        try:
            client.create_experiment(EXPERIMENT, artifact_location=f"{root}/{EXPERIMENT}")
        except MlflowException:
            pass  # created concurrently by another writer
    mlflow.set_experiment(EXPERIMENT)
    return client


def fingerprint(result: ModelResult, settings: Settings, data_hash: str) -> str:
    """Stable identity of a piece of training work (same inputs -> same fingerprint)."""
    payload = {
        "athlete": result.athlete_id,
        "family": result.family,
        "window": result.data_window,
        "data": data_hash,
        "params": {k: result.params[k] for k in sorted(result.params)},
        "seed": settings.seed,
        "code": __version__,
        "gates": settings.gates[result.family].model_dump(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in values.items()}


def _existing_runs(client: MlflowClient) -> dict[str, str]:
    """fingerprint -> run_id for every run of the experiment (one query per page)."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return {}
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id], filter_string="tags.fingerprint != ''",
            max_results=5000, page_token=token,
        )
        for run in page:
            fp = run.data.tags.get("fingerprint")
            if fp:
                out[fp] = run.info.run_id
        token = page.token
        if not token:
            return out


def _existing_version(client: MlflowClient, name: str, fp: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for v in versions:
        if v.tags.get("fingerprint") == fp:
            return str(v.version)
    return None


def _log_model(result: ModelResult) -> str:
    """Log the model under the active run and return its model URI."""
    reqs = PIP_REQUIREMENTS[result.model_kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if result.model_kind == "xgboost":
            info = mlflow.xgboost.log_model(result.model, name="model", pip_requirements=reqs)
        else:
            info = mlflow.pytorch.log_model(result.model, name="model", pip_requirements=reqs,
                                            serialization_format="pickle")
    return str(info.model_uri)


def _load_model(kind: str, uri: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "xgboost":
            return mlflow.xgboost.load_model(uri)
        return mlflow.pytorch.load_model(uri)


def register_results(
    results: Iterable[ModelResult],
    settings: Settings,
    *,
    data_hash: str,
    lineage: dict[str, str],
    score_fn: Callable[[ModelResult, Any], float],
    plot_fn: Callable[[ModelResult, Path], Path] | None = None,
    workdir: Path | None = None,
) -> list[RegistryOutcome]:
    """Log every trained result, register the passing ones, move ``champion``.

    Args:
        results: the family results (skipped/failed ones are ignored here).
        data_hash: digest of the validated input rows (lineage + idempotency).
        lineage: extra tags (flow run id, source, as-of, git commit...).
        score_fn: loss of a model on ``result.test_X/test_y`` (lower is better); used
            to re-score the current champion on the new test part.
        plot_fn: writes a residual plot for a result into a folder and returns its path.
    """
    client = configure_mlflow(settings)
    seen = _existing_runs(client)
    outcomes: list[RegistryOutcome] = []
    for result in results:
        if result.status != "trained":
            continue
        fp = fingerprint(result, settings, data_hash)
        out = RegistryOutcome(result.athlete_id, result.family)
        name = registered_name(settings, result.family, result.athlete_id)
        if fp in seen:
            out.run_id = seen[fp]
            out.reused = True
            if result.passed:
                out.registered_name = name
                out.version = _existing_version(client, name, fp)
                if out.version is None:
                    # The run was logged but registration was interrupted (a crash
                    # between the two): finish it in the same run.
                    with mlflow.start_run(run_id=out.run_id):
                        _register_version(client, result, out, name, fp, settings, score_fn)
                    outcomes.append(out)
                    continue
                out.champion_version = _alias_version(client, name, CHAMPION)
                out.champion = out.version is not None and out.version == out.champion_version
                out.decision = "same work already registered; nothing changed"
            else:
                out.decision = "same work already logged; gate failed, not registered"
            outcomes.append(out)
            continue
        verdict = result.verdict
        tags = {
            "athlete_id": result.athlete_id,
            "family": result.family,
            "fingerprint": fp,
            "gate_passed": str(bool(verdict and verdict.passed)).lower(),
            "gate_verdict": verdict.reason() if verdict else result.reason,
            "data_start": result.data_window.get("start", ""),
            "data_end": result.data_window.get("end", ""),
            "test_start": result.data_window.get("test_start", ""),
            "data_hash": data_hash,
            "code_version": __version__,
            "seed": str(settings.seed),
            "notes": "; ".join(result.notes),
            **lineage,
        }
        with mlflow.start_run(run_name=f"{result.family}-{result.athlete_id}", tags=tags) as run:
            out.run_id = run.info.run_id
            client.log_batch(
                run.info.run_id,
                metrics=[
                    Metric(k, float(v), 0, 0)
                    for k, v in {**result.metrics, **_flat("baseline_", result.baselines)}.items()
                    if v is not None and np.isfinite(v)
                ],
                params=[Param(k, str(v)[:500]) for k, v in result.params.items()]
                + [Param(f"n_{k}", str(v)) for k, v in result.n_rows.items()]
                + [Param("features", ",".join(result.feature_names)[:6000])],
                tags=[RunTag("gate_checks", json.dumps(verdict.as_dict() if verdict else {}))],
            )
            if plot_fn is not None and workdir is not None:
                png = plot_fn(result, workdir)
                client.log_artifact(run.info.run_id, str(png))
                out.artifacts["residual_plot"] = str(png)
            if result.passed:
                _register_version(client, result, out, name, fp, settings, score_fn)
            else:
                out.decision = "gate failed: " + (verdict.reason() if verdict else result.reason)
        outcomes.append(out)
    return outcomes


def _register_version(
    client: MlflowClient,
    result: ModelResult,
    out: RegistryOutcome,
    name: str,
    fp: str,
    settings: Settings,
    score_fn: Callable[[ModelResult, Any], float],
) -> None:
    """Log the model in the active run, register it, alias it and decide the champion."""
    verdict = result.verdict
    model_uri = _log_model(result)
    mv = mlflow.register_model(
        model_uri, name,
        tags={"fingerprint": fp, "gate_verdict": verdict.reason() if verdict else "",
              "run_id": str(out.run_id), **_flat("metric.", {
                  k: f"{v:.4f}" for k, v in result.metrics.items()})},
    )
    out.registered_name = name
    out.version = str(mv.version)
    client.set_registered_model_alias(name, CHALLENGER, out.version)
    auto = settings.review_mode == "auto"
    _decide_champion(client, result, out, score_fn, move=auto)
    if auto:
        from veloready_pipeline.review import record_auto_decision

        record_auto_decision(client, out, settings)


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _decide_champion(
    client: MlflowClient,
    result: ModelResult,
    out: RegistryOutcome,
    score_fn: Callable[[ModelResult, Any], float],
    move: bool = True,
) -> None:
    """Compare the new version with the champion on the same test data.

    With ``move`` False (manual review) the comparison is only recorded as a
    recommendation: the reviewer decides and `veloready_pipeline.review` moves the alias.
    """
    assert out.registered_name and out.version
    name, version = out.registered_name, out.version
    current = _alias_version(client, name, CHAMPION)
    out.previous_champion = current
    new_loss = score_fn(result, result.model)
    if not move:
        out.champion, out.champion_version = False, current
        out.review_decision = "pending"
    if current is None and not move:
        out.decision = f"pending review: first passing version (loss {new_loss:.4f})"
    elif current is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        out.champion, out.champion_version = True, version
        out.decision = f"first passing version: champion (loss {new_loss:.4f})"
    else:
        try:
            mv = client.get_model_version(name, current)
            champ = _load_model(result.model_kind, f"models:/{name}/{current}")
            old_loss = score_fn(result, champ)
            comparable = True
        except Exception as exc:  # noqa: BLE001 - recorded in the decision
            old_loss, comparable = float("inf"), False
            out.decision = f"champion v{current} could not be re-scored ({exc}); "
            mv = None
        if not move:
            verb = "beats" if new_loss < old_loss else "does not beat"
            cmp = "<" if new_loss < old_loss else ">="
            out.decision = (f"pending review: {out.decision}{verb} champion v{current} on the "
                            f"same test data ({new_loss:.4f} {cmp} {old_loss:.4f})")
        elif new_loss < old_loss:
            client.set_registered_model_alias(name, CHAMPION, version)
            out.champion, out.champion_version = True, version
            out.decision += (f"beats champion v{current} on the same test data "
                             f"({new_loss:.4f} < {old_loss:.4f}): champion")
        else:
            out.champion, out.champion_version = False, current
            out.decision += (f"does not beat champion v{current} on the same test data "
                             f"({new_loss:.4f} >= {old_loss:.4f}); champion kept")
        if mv is not None and comparable:
            client.set_model_version_tag(name, version, "champion_loss_same_test",
                                         f"{old_loss:.6f}")
    client.set_model_version_tag(name, version, "champion_decision", out.decision)
    client.set_model_version_tag(name, version, "new_loss_same_test", f"{new_loss:.6f}")


def log_report(settings: Settings, folder: Path, flow_run_id: str) -> str:
    """Log a run's evaluation report folder as an MLflow run of its own; returns run id."""
    configure_mlflow(settings)
    with mlflow.start_run(run_name=f"report-{flow_run_id}",
                          tags={"kind": "evaluation-report",
                                "prefect_flow_run_id": flow_run_id}) as run:
        mlflow.log_artifacts(str(folder), artifact_path="report")
        return str(run.info.run_id)


def log_export_variants(settings: Settings, run_id: str, record: dict[str, Any]) -> None:
    """Record each exported variant's size and gate-metric change on the model's run."""
    client = configure_mlflow(settings)
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
