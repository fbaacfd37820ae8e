"""MLflow tracking and model registry: log, register, decide the champion.

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
import logging
import multiprocessing
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils import environment as mlenv

import mlflow
from veloready_pipeline import __version__
from veloready_pipeline.config import Settings
from veloready_pipeline.ids import athlete_key
from veloready_pipeline.lifecycle.review import auto_decision_tags
from veloready_pipeline.lifecycle.store import (
    CHALLENGER,
    CHAMPION,
    EXPERIMENT,
    TAG_CHAMPION_DECISION,
    TAG_CHAMPION_LOSS,
    TAG_DECISION,
    TAG_GATE_VERDICT,
    TAG_NEW_LOSS,
    TAG_PREVIOUS,
    TAG_ROLLED_BACK,
    TAG_WITHDRAWN,
    alias_version,
    configure_mlflow,
    registered_name,
)
from veloready_pipeline.results import ModelResult

# One entry per model kind (MLflow flavour) a family may have (`families.MODEL_KINDS`).
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
    challenger: bool = False
    champion_version: str | None = None
    decision: str = ""
    reused: bool = False
    previous_champion: str | None = None
    review_decision: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)


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


def _existing_runs(client: MlflowClient, data_hash: str | None = None,
                   since_ms: int | None = None,
                   unfinished: set[str] | None = None) -> dict[str, str]:
    """fingerprint -> run_id for the runs that could match (one query per page).

    A fingerprint includes the data hash, so only runs tagged with the same hash can
    match: filtering on it keeps this query the size of one week, not of all history.
    With ``since_ms``, only runs started at or after that time (epoch ms) are read.
    ``unfinished`` collects the ids of runs read that are not FINISHED (a process killed
    mid-registration leaves its run RUNNING; an exception leaves it FAILED).
    """
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return {}
    out: dict[str, str] = {}
    token = None
    where = "tags.fingerprint != ''"
    if data_hash:
        where += f" and tags.data_hash = '{data_hash}'"
    if since_ms is not None:
        where += f" and attributes.start_time >= {int(since_ms)}"
    while True:
        page = client.search_runs(
            [exp.experiment_id], filter_string=where,
            max_results=5000, page_token=token,
        )
        for run in page:
            fp = run.data.tags.get("fingerprint")
            if fp:
                out[fp] = run.info.run_id
                if unfinished is not None:
                    if run.info.status == "FINISHED":
                        unfinished.discard(run.info.run_id)
                    else:
                        unfinished.add(run.info.run_id)
        token = page.token
        if not token:
            return out


@dataclass
class KnownRuns:
    """The runs already logged for one data hash, kept current across `register_results`
    calls (the weekly flow registers chunk after chunk under one hash).

    Re-reading every run of the week for each chunk made registration grow with N:
    MLflow loads each run whole (tags, params, metrics; ~1.2 ms a run on SQLite), so
    the 60th chunk of a 1,000-athlete week read 3,000 runs (~3.6 s) to check 50. Here
    the first call reads them all, later calls read only the runs started since the
    previous read (less `MARGIN_MS` for clock skew between writers), and the runs a
    call logs are added as it logs them. Runs deleted while the flow runs are not
    noticed (a deleted run's work counts as done until the next flow run).
    """

    data_hash: str
    runs: dict[str, str] = field(default_factory=dict)
    unfinished: set[str] = field(default_factory=set)
    since_ms: int | None = None
    experiment_id: str | None = None

    # Writers of one data hash run on one host (the flow process, or its local
    # registry processes), so a few seconds cover commit delays; runs this close to
    # the previous read are simply read twice.
    MARGIN_MS = 5_000

    def refresh(self, client: MlflowClient, experiment_id: str) -> dict[str, str]:
        """Read the runs logged since the last refresh; returns fingerprint -> run id."""
        if experiment_id != self.experiment_id:  # another store or a recreated experiment
            self.runs, self.since_ms, self.experiment_id = {}, None, experiment_id
            self.unfinished = set()
        now_ms = int(time.time() * 1000)
        since = None if self.since_ms is None else self.since_ms - self.MARGIN_MS
        self.runs.update(_existing_runs(client, self.data_hash, since, self.unfinished))
        self.since_ms = now_ms
        return self.runs


def _first_version_with(client: MlflowClient, name: str, fp: str) -> str | None:
    """The lowest version of ``name`` registered for fingerprint ``fp`` (None if none)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    found = [int(v.version) for v in versions if v.tags.get("fingerprint") == fp]
    return str(min(found)) if found else None


def _artifact_repo(client: MlflowClient, run: Any) -> Any:
    """The run's artifact repository, from the run we already hold.

    ``client.log_artifact(run_id, ...)`` looks the run up again (a store read) to find
    its artifact location; the run returned by ``create_run`` already has it.
    """
    return get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)


_REQUIREMENTS_CHECKED: set[tuple[str, ...]] = set()


def _no_requirement_check(model_requirements: list[str]) -> None:
    """Stands in for MLflow's requirement check once it ran in this process."""


@contextmanager
def _requirements_checked_once(reqs: list[str]) -> Iterator[None]:
    """Let MLflow check pinned requirements against this environment once per process.

    ``save_model`` compares every pinned requirement with the installed version
    (~25 ms a model, ~20 CPU-s a week at 1,000 athletes); the pins and the environment
    do not change between the models of one process, so later saves skip the check.
    """
    key = tuple(reqs)
    check = getattr(mlenv, "warn_dependency_requirement_mismatches", None)
    if key not in _REQUIREMENTS_CHECKED or check is None:
        _REQUIREMENTS_CHECKED.add(key)
        yield
        return
    mlenv.warn_dependency_requirement_mismatches = _no_requirement_check
    try:
        yield
    finally:
        mlenv.warn_dependency_requirement_mismatches = check


def _log_model(client: MlflowClient, run: Any, result: ModelResult) -> str:
    """Save the model as an MLflow model in the run's artifacts; returns its artifact URI.

    ``save_model`` + one artifact upload instead of ``log_model``: the same MLmodel
    folder (loadable as ``models:/<name>/<version>``, explicit pip requirements, no
    dependency inference) without MLflow 3's logged-model bookkeeping (~10 extra
    store round trips per model).
    """
    reqs = PIP_REQUIREMENTS[result.model_kind]
    with (warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp,
          _requirements_checked_once(reqs)):
        warnings.simplefilter("ignore")
        path = str(Path(tmp) / "model")
        if result.model_kind == "xgboost":
            mlflow.xgboost.save_model(result.model, path, pip_requirements=reqs)
        else:
            # Pickle on purpose (a plain state of a small module that our own code
            # loads); its per-model logged warning would bury the run's log.
            torch_log = logging.getLogger("mlflow.pytorch")
            level = torch_log.level
            torch_log.setLevel(logging.ERROR)
            try:
                mlflow.pytorch.save_model(result.model, path, pip_requirements=reqs,
                                          serialization_format="pickle")
            finally:
                torch_log.setLevel(level)
        _artifact_repo(client, run).log_artifacts(path, "model")
    return f"{run.info.artifact_uri}/model"


def _create_version(client: MlflowClient, name: str, source: str, run_id: str,
                    tags: dict[str, str]) -> Any:
    """Register ``source`` as a new version of ``name`` (creating the model if needed).

    Creating the registered model races when parallel writers register the same name
    for the first time: "already exists" is the expected answer for all but one.
    """
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    for attempt in range(5):
        try:
            return client.create_model_version(name, source, run_id=run_id, tags=tags)
        except MlflowException as exc:
            # The store numbers versions max+1 and retries a clash 3 times; more
            # simultaneous writers on one name can exhaust that: back off and retry.
            if "Giving up" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _load_model(kind: str, uri: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "xgboost":
            return mlflow.xgboost.load_model(uri)
        if kind == "torch":
            return mlflow.pytorch.load_model(uri)
    raise ValueError(f"unknown model kind {kind!r} of {uri}; known: "
                     f"{', '.join(PIP_REQUIREMENTS)}")


def register_results(
    results: Iterable[ModelResult],
    settings: Settings,
    *,
    data_hash: str,
    lineage: dict[str, str],
    score_fn: Callable[[ModelResult, Any], float],
    plot_fn: Callable[[ModelResult, Path], Path] | None = None,
    workdir: Path | None = None,
    known_runs: KnownRuns | None = None,
) -> list[RegistryOutcome]:
    """Log every trained result, register the passing ones, move ``champion``.

    Args:
        results: the family results (skipped/failed ones are ignored here).
        data_hash: digest of the validated input rows (lineage + idempotency).
        lineage: extra tags (flow run id, source, as-of, git commit...).
        score_fn: loss of a model on ``result.test_X/test_y`` (lower is better); used
            to re-score the current champion on the new test part.
        plot_fn: writes a residual plot for a result into a folder and returns its path
            (the flow passes `plots.model_svg`: ~1 ms a model, where a matplotlib PNG costs
            ~0.3 s of CPU, a tenth of a model's whole training at 1,000 athletes).
        known_runs: the runs already logged under ``data_hash``, carried from one call
            to the next by a caller that registers in chunks (see `KnownRuns`);
            without it each call reads every run logged under ``data_hash``.

    On a store that takes several writers (PostgreSQL, MySQL, an MLflow server) and
    with ``execution.local_workers`` > 1, the results are registered by that many
    local processes at once (in contiguous shards; outcomes come back in order). On
    SQLite (the embedded default) one process writes.
    """
    results = [r for r in results if r.status == "trained"]
    client = configure_mlflow(settings)  # schema + experiment before any worker starts
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise RuntimeError(f"MLflow experiment {EXPERIMENT!r} is missing after set-up")
    experiment_id = experiment.experiment_id
    if known_runs is not None and known_runs.data_hash != data_hash:
        raise ValueError(f"known_runs holds data hash {known_runs.data_hash!r}, "
                         f"not {data_hash!r}")
    workers = _registry_workers(settings, len(results))
    if workers > 1:
        if known_runs is not None:
            known_runs.refresh(client, experiment_id)  # shards start from a current copy
        done = _register_in_processes(results, settings, workers, data_hash=data_hash,
                                      lineage=lineage, score_fn=score_fn, plot_fn=plot_fn,
                                      workdir=workdir, known_runs=known_runs)
        if known_runs is not None:
            for result, out in zip(results, done, strict=True):
                if out.run_id:
                    known_runs.runs[fingerprint(result, settings, data_hash)] = out.run_id
                    known_runs.unfinished.discard(out.run_id)
        return done
    unfinished: set[str] = set()
    seen = (known_runs.refresh(client, experiment_id) if known_runs is not None
            else _existing_runs(client, data_hash, unfinished=unfinished))
    if known_runs is not None:
        unfinished = known_runs.unfinished  # after refresh (which may start a new set)
    context_tags = resolve_tags({})  # user, source, git commit: resolved once per call
    outcomes: list[RegistryOutcome] = []
    for result in results:
        fp = fingerprint(result, settings, data_hash)
        out = RegistryOutcome(result.athlete_id, result.family)
        name = registered_name(settings, result.family, result.athlete_id)
        if fp in seen:
            out.run_id = seen[fp]
            out.reused = True
            _resume(client, result, out, name, fp, settings, score_fn, plot_fn, workdir,
                    interrupted=out.run_id in unfinished)
            unfinished.discard(out.run_id)
            outcomes.append(out)
            continue
        verdict = result.verdict
        tags = {
            "athlete_id": result.athlete_id,
            "family": result.family,
            "fingerprint": fp,
            "gate_passed": str(bool(verdict and verdict.passed)).lower(),
            TAG_GATE_VERDICT: verdict.reason() if verdict else result.reason,
            "data_start": result.data_window.get("start", ""),
            "data_end": result.data_window.get("end", ""),
            "test_start": result.data_window.get("test_start", ""),
            "data_hash": data_hash,
            "code_version": __version__,
            "seed": str(settings.seed),
            "notes": "; ".join(result.notes),
            **lineage,
        }
        # Through the client, not the fluent API: create, log_batch, terminate.
        run_name = f"{result.family}-{athlete_key(result.athlete_id)}"
        with _client_run(client, experiment_id, run_name, context_tags | tags) as run:
            out.run_id = seen[fp] = run.info.run_id
            _log_run_data(client, run, result, out, plot_fn, workdir)
            if result.passed:
                _register_version(client, run, result, out, name, fp, settings, score_fn)
            else:
                out.decision = "gate failed: " + (verdict.reason() if verdict else result.reason)
        outcomes.append(out)
    return outcomes


def _log_run_data(client: MlflowClient, run: Any, result: ModelResult, out: RegistryOutcome,
                  plot_fn: Callable[[ModelResult, Path], Path] | None,
                  workdir: Path | None) -> None:
    """Metrics, parameters, gate checks and the residual plot of one model's run.

    Idempotent (the same values logged twice leave the run as logged once), so a run
    interrupted half-way is completed by logging it again.
    """
    verdict = result.verdict
    client.log_batch(
        run.info.run_id,
        metrics=[
            Metric(k, float(v), 0, 0)
            for k, v in {**result.metrics, **_flat("baseline_", result.baselines)}.items()
            if v is not None and np.isfinite(v)
        ],
        # athlete_baseline whole (monitoring recomputes the relative inputs from it)
        params=[Param(k, str(v)[:6000 if k == "athlete_baseline" else 500])
                for k, v in result.params.items()]
        + [Param(f"n_{k}", str(v)) for k, v in result.n_rows.items()]
        + [Param("features", ",".join(result.feature_names)[:6000])],
        tags=[RunTag("gate_checks", json.dumps(verdict.as_dict() if verdict else {}))],
    )
    if plot_fn is not None and workdir is not None:
        plot = plot_fn(result, workdir)
        _artifact_repo(client, run).log_artifact(str(plot))
        out.artifacts["residual_plot"] = str(plot)


def _resume(client: MlflowClient, result: ModelResult, out: RegistryOutcome, name: str,
            fp: str, settings: Settings, score_fn: Callable[[ModelResult, Any], float],
            plot_fn: Callable[[ModelResult, Path], Path] | None, workdir: Path | None, *,
            interrupted: bool) -> None:
    """Work whose run already exists: leave it, or finish what an interrupted run left.

    Every step a crash can interrupt is finished here, in the same run and version, so
    the registry ends as an uninterrupted run would have left it:

    * run not FINISHED (killed: RUNNING; an exception: FAILED): its data is logged
      again (idempotent) and the run is marked FINISHED once the steps below succeed;
    * gate passed, no version: registered now (champion decision as usual);
    * version without its alias: see `_finish_aliases`.
    """
    run = client.get_run(str(out.run_id)) if interrupted else None
    if run is not None:
        _log_run_data(client, run, result, out, plot_fn, workdir)
    if result.passed:
        out.registered_name = name
        out.version = _first_version_with(client, name, fp)
        if out.version is None:
            # The run was logged but registration was interrupted: finish it in the run.
            _register_version(client, run or client.get_run(str(out.run_id)), result, out,
                              name, fp, settings, score_fn)
            out.decision = f"resumed an interrupted registration: {out.decision}"
        else:
            _finish_aliases(client, out, name)
    else:
        out.decision = "same work already logged; gate failed, not registered"
    if run is not None:
        client.set_terminated(run.info.run_id)


def _finish_aliases(client: MlflowClient, out: RegistryOutcome, name: str) -> None:
    """Set the alias a version's recorded decision gave it, if a crash left it unset.

    The decision is written with the version (tags), the alias after it, so a process
    killed in between leaves a version that is neither ``champion`` nor ``challenger``
    though it should be. It is completed only while nothing has happened since: it is
    still the newest version, it was never rolled back, and (for an automatic
    promotion) the champion is still the one it was compared with. Otherwise the
    interrupted decision is stale and is withdrawn (tagged ``registration_withdrawn``;
    the version stays registered but is neither champion nor challenger).
    """
    version = str(out.version)
    champion = alias_version(client, name, CHAMPION)
    challenger = alias_version(client, name, CHALLENGER)
    out.champion_version = champion
    out.champion = champion == version
    out.challenger = challenger == version
    out.decision = "same work already registered; nothing changed"
    tags = client.get_model_version(name, version).tags
    decision = tags.get(TAG_DECISION)
    out.review_decision = decision or ""
    manual = tags.get(TAG_CHAMPION_DECISION, "").startswith("pending review")
    wanted = (CHAMPION if decision == "auto_promoted"
              else CHALLENGER if decision is None and manual else None)
    if (out.champion or out.challenger or wanted is None or TAG_ROLLED_BACK in tags
            or TAG_WITHDRAWN in tags):
        return
    newest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    compared_with = tags.get(TAG_PREVIOUS) or None
    stale = None
    if newest != int(version):
        stale = f"v{newest} was registered after it"
    elif wanted == CHAMPION and champion != compared_with:
        stale = (f"the champion moved to v{champion} after it was compared with "
                 f"{'v' + compared_with if compared_with else 'no champion'}")
    if stale:
        client.set_model_version_tag(name, version, TAG_WITHDRAWN, stale)
        out.decision = (f"interrupted registration of v{version} withdrawn: {stale}; "
                        "neither champion nor challenger")
        return
    client.set_registered_model_alias(name, wanted, version)
    if wanted == CHAMPION:
        out.champion, out.champion_version = True, version
        if challenger is not None:  # as `_register_version` does in auto mode
            client.delete_registered_model_alias(name, CHALLENGER)
        reason = tags.get(TAG_CHAMPION_DECISION, "")
    else:
        out.challenger, out.review_decision = True, "pending"
        reason = "awaiting review"
    out.decision = (f"repaired: v{version} was registered but a crash left it without its "
                    f"{wanted} alias; {wanted} set now ({reason})")


MIN_RESULTS_PER_WRITER = 20  # below this, starting a process costs more than it saves


def _registry_workers(settings: Settings, n_results: int) -> int:
    """How many processes may write to the tracking store at once (1 on SQLite)."""
    uri = settings.mlflow_tracking_uri()
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return 1
    return max(1, min(settings.execution.local_workers, n_results // MIN_RESULTS_PER_WRITER))


def _register_shard(args: tuple[list[ModelResult], Settings, dict[str, Any]]
                    ) -> list[RegistryOutcome]:
    results, settings, kwargs = args
    one_writer = settings.model_copy(update={
        "execution": settings.execution.model_copy(update={"local_workers": 1})})
    return register_results(results, one_writer, **kwargs)


def _register_in_processes(results: list[ModelResult], settings: Settings, workers: int,
                           **kwargs: Any) -> list[RegistryOutcome]:
    """`register_results` over contiguous shards in ``workers`` local processes."""
    size = -(-len(results) // workers)
    shards = [results[i : i + size] for i in range(0, len(results), size)]
    with ProcessPoolExecutor(len(shards),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_register_shard, [(shard, settings, kwargs) for shard in shards]))
    return [o for part in parts for o in part]


@contextmanager
def _client_run(client: MlflowClient, experiment_id: str, run_name: str,
                tags: dict[str, str]) -> Iterator[Any]:
    """A run created and closed through the client (no fluent active-run bookkeeping)."""
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    try:
        yield run
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id)


def _register_version(
    client: MlflowClient,
    run: Any,
    result: ModelResult,
    out: RegistryOutcome,
    name: str,
    fp: str,
    settings: Settings,
    score_fn: Callable[[ModelResult, Any], float],
) -> None:
    """Log the model in the run, decide against the champion, register it, move aliases.

    The comparison with the current champion needs nothing of the new version, so it
    comes first and every tag (lineage, metrics, the champion comparison and, in
    ``review_mode: auto``, the decision and rollout tags) is written with the version
    itself: one registry write instead of ~16 single-tag writes per model.
    """
    verdict = result.verdict
    source = _log_model(client, run, result)
    auto = settings.review_mode == "auto"
    tags = {"fingerprint": fp, TAG_GATE_VERDICT: verdict.reason() if verdict else "",
            "run_id": str(out.run_id),
            **_flat("metric.", {k: f"{v:.4f}" for k, v in result.metrics.items()}),
            **_decide_champion(client, result, out, name, score_fn, move=auto)}
    if auto:
        tags |= auto_decision_tags(out, settings)
    mv = _create_version(client, name, source, str(out.run_id), tags=tags)
    out.registered_name = name
    out.version = str(mv.version)
    first = _first_version_with(client, name, fp)
    if first is not None and first != out.version:
        # Another writer registered the same work at the same time (parallel workers or
        # two runs on a PostgreSQL store): the lowest version wins and ours is withdrawn
        # before any alias moves, so every piece of work is registered exactly once.
        client.delete_model_version(name, out.version)
        client.set_tag(str(out.run_id), "duplicate_of_version", first)
        out.version = first
        out.champion_version = alias_version(client, name, CHAMPION)
        out.champion = out.version == out.champion_version
        out.review_decision = ""
        out.decision = f"same work registered concurrently as v{first}; duplicate withdrawn"
        return
    if out.champion:
        client.set_registered_model_alias(name, CHAMPION, out.version)
        out.champion_version = out.version
    if not auto:
        client.set_registered_model_alias(name, CHALLENGER, out.version)
        out.challenger = True
    elif alias_version(client, name, CHALLENGER) is not None:
        # A challenger left pending by an earlier manual-review run is superseded by
        # this decided version (the alias means "awaiting a decision").
        client.delete_registered_model_alias(name, CHALLENGER)


def _decide_champion(
    client: MlflowClient,
    result: ModelResult,
    out: RegistryOutcome,
    name: str,
    score_fn: Callable[[ModelResult, Any], float],
    move: bool = True,
) -> dict[str, str]:
    """Compare the new model with the champion on the same test data; returns its tags.

    Sets ``out.champion`` (the new version should become champion), the previous
    champion and the decision text; moves nothing (the caller moves the alias once
    the version exists). With ``move`` False (manual review) the comparison is only
    recorded as a recommendation: the reviewer decides and
    `veloready_pipeline.lifecycle.review` moves the alias.
    """
    current = alias_version(client, name, CHAMPION)
    out.previous_champion = current
    new_loss = score_fn(result, result.model)
    tags: dict[str, str] = {}
    if not move:
        out.champion, out.champion_version = False, current
        out.review_decision = "pending"
    if current is None and not move:
        out.decision = f"pending review: first passing version (loss {new_loss:.4f})"
    elif current is None:
        out.champion = True
        out.decision = f"first passing version: champion (loss {new_loss:.4f})"
    else:
        try:
            client.get_model_version(name, current)
            champ = _load_model(result.model_kind, f"models:/{name}/{current}")
            old_loss = score_fn(result, champ)
            tags[TAG_CHAMPION_LOSS] = f"{old_loss:.6f}"
        except Exception as exc:  # noqa: BLE001 - recorded in the decision
            old_loss = float("inf")
            out.decision = f"champion v{current} could not be re-scored ({exc}); "
        if not move:
            verb = "beats" if new_loss < old_loss else "does not beat"
            cmp = "<" if new_loss < old_loss else ">="
            out.decision = (f"pending review: {out.decision}{verb} champion v{current} on the "
                            f"same test data ({new_loss:.4f} {cmp} {old_loss:.4f})")
        elif new_loss < old_loss:
            out.champion = True
            out.decision += (f"beats champion v{current} on the same test data "
                             f"({new_loss:.4f} < {old_loss:.4f}): champion")
        else:
            out.champion, out.champion_version = False, current
            out.decision += (f"does not beat champion v{current} on the same test data "
                             f"({new_loss:.4f} >= {old_loss:.4f}); champion kept")
    tags[TAG_CHAMPION_DECISION] = out.decision
    tags[TAG_NEW_LOSS] = f"{new_loss:.6f}"
    return tags


def log_report(settings: Settings, folder: Path, flow_run_id: str) -> str:
    """Log a run's evaluation report folder as an MLflow run of its own; returns run id."""
    configure_mlflow(settings)
    with mlflow.start_run(run_name=f"report-{flow_run_id}",
                          tags={"kind": "evaluation-report",
                                "prefect_flow_run_id": flow_run_id}) as run:
        mlflow.log_artifacts(str(folder), artifact_path="report")
        return str(run.info.run_id)
