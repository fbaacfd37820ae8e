"""Re-runs with nothing changed: recognise a family's unchanged training work before it runs.

A family is trained as one *batch*: the zone and injury networks are fitted and gated
on their chunk's pooled test parts (and population-level stages may fit one model on
every athlete), so one athlete's rows can change every other athlete's model of that
family. The unit of skipping is therefore the whole family of a run, never a single
athlete: its *batch fingerprint* covers

- the rows every model of the family would see (the validated, windowed frame of all
  athletes of the run: `pipeline.data_digest`),
- the settings that shape training, registration and export (everything but the
  sections that cannot: briefs, source/simulator location, review timing, other
  families' gates), the seed included,
- the code: the package version, a hash of every module of the package and the
  versions of the libraries that fit and export the models.

After a run trains a family with no failed model or export, `save` stores its summary
rows, the fingerprint and every athlete's champion/challenger aliases under
``<data_dir>/rerun/<family>.json``. The next run with the same fingerprint reuses those
rows (status ``unchanged``) instead of training, but only while the registry and the
shipped files still match: each athlete's aliases as saved, and each champion's
export record present with its files, and the athlete's signed OTA manifest verifying
and listing that champion. Anything else (a changed row, setting or module, a moved
alias, a missing or broken export or manifest, a state file from another store) trains
the whole family as before.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from veloready_pipeline import __version__
from veloready_pipeline.config import Settings
from veloready_pipeline.logs import get_logger

log = get_logger(__name__)

STATE_VERSION = 1
# Settings that cannot change what a family trains, registers or exports.
IRRELEVANT_SETTINGS = ("briefs", "source", "simulator", "families", "review_timeout_s",
                       "review_poll_s", "monitoring")
LIBRARIES = ("xgboost-cpu", "xgboost", "torch", "optuna", "scikit-learn", "numpy", "pandas",
             "mlflow", "coremltools", "onnx", "great-expectations")

_CODE_HASH: str | None = None


def code_fingerprint() -> str:
    """Package version, a hash of every module (package, tasks, flows), library versions."""
    global _CODE_HASH
    if _CODE_HASH is None:
        h = hashlib.sha256(__version__.encode())
        roots = [Path(__file__).resolve().parent]
        for pkg in ("tasks", "flows"):  # the Prefect wrappers, when importable
            spec = importlib.util.find_spec(pkg)
            if spec is not None and spec.submodule_search_locations:
                roots += [Path(p) for p in spec.submodule_search_locations]
        for root in roots:
            for path in sorted(root.rglob("*.py")):
                h.update(f"{root.name}/{path.relative_to(root).as_posix()}".encode())
                h.update(path.read_bytes())
        for lib in LIBRARIES:
            try:
                h.update(f"{lib}=={metadata.version(lib)}".encode())
            except metadata.PackageNotFoundError:
                pass
        _CODE_HASH = h.hexdigest()[:24]
    return _CODE_HASH


def settings_fingerprint(settings: Settings, family: str) -> dict[str, Any]:
    """The settings a family's training, registration and export depend on."""
    data = settings.model_dump(mode="json")
    for key in IRRELEVANT_SETTINGS:
        data.pop(key, None)
    data["gates"] = (data.get("gates") or {}).get(family)
    data["tracking_uri"] = settings.mlflow_tracking_uri()
    return data


def batch_fingerprint(family: str, data_digest: str, athlete_ids: Sequence[str],
                      settings: Settings, as_of: str | None = None) -> str:
    """Identity of one family's whole training batch (rows, settings, seed, code)."""
    payload = {"family": family, "data": data_digest, "athletes": sorted(athlete_ids),
               "as_of": as_of or "", "settings": settings_fingerprint(settings, family),
               "code": code_fingerprint(), "state_version": STATE_VERSION}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def state_path(settings: Settings, family: str) -> Path:
    """Where the last trained batch of ``family`` is recorded."""
    return settings.resolve(settings.paths.data_dir) / "rerun" / f"{family}.json"


@dataclass
class RerunPlan:
    """Which families of a run are unchanged (their stored rows) and which to train."""

    fingerprints: dict[str, str]
    unchanged: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> state
    reasons: dict[str, str] = field(default_factory=dict)  # family -> why it trains

    def to_train(self, families: Sequence[str]) -> list[str]:
        return [f for f in families if f not in self.unchanged]

    def rows(self) -> list[dict[str, Any]]:
        """Summary rows of the unchanged families (status ``unchanged``)."""
        out = []
        for state in self.unchanged.values():
            for row in state["rows"]:
                row = json.loads(json.dumps(row))
                prev = row.get("status", "")
                version = row.get("registry_version")
                what = prev.replace("_", " ") + (f" v{version}" if version else "")
                row["previous_status"] = prev
                row["status"] = "unchanged"
                row["reason"] = (f"unchanged since flow run {state.get('flow_run_id')} "
                                 f"(same rows, settings and code): {what}: "
                                 f"{row.get('reason', '')}")
                row["unchanged_since"] = state.get("flow_run_id")
                out.append(row)
        return out


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def plan(frame: pd.DataFrame, families: Sequence[str], settings: Settings,
         as_of: str | None = None, data_digest: str | None = None) -> RerunPlan:
    """Fingerprint every family's batch and find the ones whose work is already done."""
    from veloready_pipeline.ingest import data_digest as digest_of

    digest = data_digest or (digest_of(frame) if len(frame) else "empty")
    ids = sorted(frame["athlete_id"].astype(str).unique()) if len(frame) else []
    fps = {f: batch_fingerprint(f, digest, ids, settings, as_of) for f in families}
    out = RerunPlan(fps)
    checker = _Checker(settings)
    for family in families:
        state = _read_state(state_path(settings, family))
        why = _why_not_unchanged(state, fps[family], ids, checker)
        if why is None and state is not None:
            out.unchanged[family] = state
            log.info("rerun %s: %d athletes unchanged since flow run %s (batch fingerprint "
                     "%s): not retrained", family, len(ids), state.get("flow_run_id"),
                     fps[family][:12])
        else:
            out.reasons[family] = why or "no earlier batch"
            log.info("rerun %s: training %d athletes: %s", family, len(ids), out.reasons[family])
    return out


def _why_not_unchanged(state: dict[str, Any] | None, fp: str, ids: list[str],
                       checker: _Checker) -> str | None:
    """None when the stored batch stands; else why the family must train."""
    if state is None:
        return "no earlier batch recorded"
    if state.get("fingerprint") != fp:
        return "rows, settings or code changed since the last trained batch"
    rows = state.get("rows") or []
    if sorted({str(r.get("athlete_id")) for r in rows}) != ids:
        return "the recorded batch covers other athletes"
    for aid in ids:
        problem = checker.problem(state["family"], aid, state.get("aliases", {}).get(aid, {}))
        if problem:
            return problem
    return None


class _Checker:
    """Registry aliases, export records and signed manifests, read once per athlete."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._manifests: dict[str, Any] = {}
        self._public_key: Any = None

    def client(self) -> Any:
        if self._client is None:
            from veloready_pipeline.lifecycle.store import configure_mlflow

            self._client = configure_mlflow(self.settings)
        return self._client

    def problem(self, family: str, athlete_id: str, saved: dict[str, str]) -> str | None:
        from veloready_pipeline.lifecycle.store import model_aliases

        now = model_aliases(self.client(), self.settings, family, athlete_id)
        if now != saved:
            return (f"{athlete_id}: registry aliases moved since the last batch "
                    f"({saved or 'none'} -> {now or 'none'})")
        champion, challenger = now.get("champion"), now.get("challenger")
        if challenger is not None:  # awaiting review: an approval ships its export
            problem = self._export_problem(family, athlete_id, challenger)
            if problem:
                return problem
        if champion is None:
            return None
        return (self._export_problem(family, athlete_id, champion)
                or self._manifest_problem(family, athlete_id, champion))

    def _export_problem(self, family: str, athlete_id: str, version: str) -> str | None:
        from veloready_pipeline.lifecycle.manifests import export_record

        try:
            rec = export_record(self.settings, family, athlete_id, version)
        except (OSError, ValueError) as exc:
            return f"{athlete_id}: export record of {family} v{version} unreadable ({exc})"
        if rec is None:
            return f"{athlete_id}: {family} v{version} has no export"
        for name, art in (rec.get("artifacts") or {}).items():
            if not Path(str(art.get("path", ""))).exists():
                return f"{athlete_id}: {family} v{version} export file {name} is missing"
        return None

    def _manifest_problem(self, family: str, athlete_id: str, version: str) -> str | None:
        from veloready_pipeline.export.ota import (
            OTAVerificationError,
            load_public_key,
            public_key_path,
            verify_manifest,
        )
        from veloready_pipeline.ids import athlete_key

        if athlete_id not in self._manifests:
            path = (self.settings.resolve(self.settings.paths.ota_dir)
                    / athlete_key(athlete_id) / "manifest.json")
            try:
                if self._public_key is None:
                    key = self.settings.resolve(self.settings.paths.signing_key)
                    self._public_key = load_public_key(public_key_path(key))
                verify_manifest(path, self._public_key)
                self._manifests[athlete_id] = json.loads(path.read_text(encoding="utf-8"))
            except (OTAVerificationError, OSError, ValueError) as exc:
                self._manifests[athlete_id] = str(exc) or type(exc).__name__
        manifest = self._manifests[athlete_id]
        if isinstance(manifest, str):
            return f"{athlete_id}: OTA manifest does not verify ({manifest})"
        listed = {(str(m.get("family")), str(m.get("registry_version")))
                  for m in manifest.get("models", []) if isinstance(m, dict)}
        if (family, str(version)) not in listed:
            return f"{athlete_id}: OTA manifest does not list {family} champion v{version}"
        return None


def save(settings: Settings, fingerprints: dict[str, str], rows: list[dict[str, Any]],
         trained: Sequence[str], flow_run_id: str) -> list[str]:
    """Record each trained family's batch whose every model trained and exported cleanly.

    Returns the families recorded. The rows kept are the athletes the family trained
    on (rows with ``n_rows``; quarantined and window-skipped athletes are decided by
    validation on every run). A failed model, a failed export or an unshipped champion
    (which may be transient) leaves no record, so the next run trains the family again.
    """
    from veloready_pipeline.fsio import atomic_write_text
    from veloready_pipeline.lifecycle.store import configure_mlflow, model_aliases

    client = None
    saved = []
    for family in trained:
        path = state_path(settings, family)
        fam_rows = [r for r in rows if r["family"] == family and "n_rows" in r
                    and r["status"] != "unchanged"]
        broken = [r for r in fam_rows if r["status"] in ("failed", "unshipped")
                  or (r.get("artifacts") or {}).get("export_error")]
        if broken or not fam_rows:
            path.unlink(missing_ok=True)
            continue
        client = client or configure_mlflow(settings)
        aliases = {r["athlete_id"]: model_aliases(client, settings, family, r["athlete_id"])
                   for r in fam_rows}
        state = {"state_version": STATE_VERSION, "family": family,
                 "fingerprint": fingerprints[family], "flow_run_id": flow_run_id,
                 "aliases": aliases, "rows": fam_rows}
        atomic_write_text(path, json.dumps(state, indent=1, default=str))
        saved.append(family)
    return saved
