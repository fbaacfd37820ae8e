"""Typed configuration for every flow, task and CLI command.

One `Settings` object is built from a YAML file plus ``VELOREADY_*`` environment
variables (nested fields use ``__``, e.g. ``VELOREADY_TUNING__N_TRIALS=10``) and is
validated before any work starts, so a bad value fails in the first second with a
message that names the field. Nothing here touches the file system or MLflow at import
time: paths are resolved by `Settings.resolved_paths()` when a flow starts.

Sources merge field by field: defaults < YAML file < ``VELOREADY_*`` environment <
explicit overrides. Setting one gate threshold (``gates.recovery.rmse_max``) keeps the
defaults of the others; a threshold is switched off only by setting it to ``null``.
Search spaces merge the same way (per family, then per parameter). Unknown keys are
errors at every depth, in the file and in ``VELOREADY_*`` names, and every problem is
raised as one `ConfigError` line naming the key and where it came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

# ``VELOREADY_*`` environment names that are not settings.
NON_SETTING_ENV = frozenset({"VELOREADY_CONFIG", "VELOREADY_HOME", "VELOREADY_TIMING_FILE"})
NON_SETTING_ENV_PREFIXES = ("VELOREADY_TEST_",)


class ConfigError(ValueError):
    """A settings problem, said in one line that names the key and where it came from."""


# ------------------------------------------------------------------ model family names
# The family names settings accept, and each family's defaults: a light name registry.
# `veloready_pipeline.families` registers every family here (``FAMILIES.register``);
# config never imports the families (they import config). Importing the package
# (`veloready_pipeline/__init__.py`) imports the family table, which registers the
# built-in families before any settings are validated.


@dataclass(frozen=True)
class FamilyDefaults:
    """What settings know of one model family, given by its module.

    ``gates``: default gate thresholds (a threshold set in the YAML/env is merged over
    them field by field); ``space``: default Optuna search space (merged per parameter);
    ``space_params``: the hyper-parameters the family's trainer reads (any other name
    in a search space would be tuned and then ignored, so it is refused).
    """

    gates: GateThresholds
    space: SearchSpace
    space_params: frozenset[str]


_FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {}


def _family_defaults() -> dict[str, FamilyDefaults]:
    """The registered families' defaults, in registration order."""
    return _FAMILY_DEFAULTS


def register_family_defaults(name: str, defaults: FamilyDefaults) -> None:
    """Accept ``name`` as a family in settings, with these defaults."""
    _FAMILY_DEFAULTS[name] = defaults


def unregister_family_defaults(name: str) -> None:
    _FAMILY_DEFAULTS.pop(name, None)


def family_names() -> tuple[str, ...]:
    """The registered family names, in registration order."""
    return tuple(_family_defaults())


def _known_family(name: str) -> str:
    known = _family_defaults()
    if name not in known:
        raise ValueError(f"unknown family {name!r}; known: "
                         f"{', '.join(known) or 'none registered'}")
    return name


# A family name in settings (``families``, the keys of ``gates`` and ``tuning.spaces``):
# any registered family; an unknown one fails validation naming the setting.
Family = Annotated[str, AfterValidator(_known_family)]


class _Section(BaseModel):
    """A settings section: an unknown key is an error, never silently ignored.

    Frozen, like `Settings`: settings are complete once validated. A change is made
    before validation (`load_settings(**overrides)`) or as a validated copy
    (``model_copy(update=...)``), never by assigning to a field.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


def repo_root() -> Path:
    """The repository (or working) root that relative default paths hang from.

    ``VELOREADY_HOME`` wins; otherwise the current working directory, so that
    ``veloready train`` run from the checkout writes under the checkout.
    """
    return Path(os.environ.get("VELOREADY_HOME", os.getcwd())).resolve()


class PathSettings(_Section):
    """Every place the pipeline writes. Relative paths are relative to `repo_root()`."""

    data_dir: Path = Path("data")
    mlflow_dir: Path = Path("mlflow")
    ota_dir: Path = Path("data/ota")
    reports_dir: Path = Path("data/reports")
    quarantine_dir: Path = Path("data/quarantine")
    brief_store_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the brief store; default sqlite under data/briefs.db",
    )
    signing_key: Path = Field(
        default=Path("data/keys/ota_ed25519.pem"),
        description="Ed25519 private key (PEM) for OTA manifests; created on first use",
    )
    prediction_store_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the live-monitoring prediction store; "
        "default sqlite under data/predictions.db",
    )


class SourceSettings(_Section):
    """Where the daily rows come from."""

    name: Literal["auto", "canonical", "generic_csv", "intervals", "pmdata", "postgres"] = "auto"
    path: str | None = Field(default=None, description="file, folder or SQLAlchemy URL")
    mapping: Path | None = Field(default=None, description="YAML mapping for generic_csv")
    table: str | None = Field(default=None, description="table name for the postgres source")
    query: str | None = Field(default=None, description="SQL query for the postgres source")


class SimulatorSettings(_Section):
    """Synthetic athletes used when no data source is configured."""

    athletes: int = Field(default=20, ge=1, le=100_000)
    days: int = Field(default=180, ge=14, le=3650)
    profile: Literal["realistic", "easy", "mixed"] = "realistic"
    start_date: str = Field(
        default="auto",
        description="first simulated day (YYYY-MM-DD), or 'auto': the history ends today "
                    "(UTC), so today's briefs have fresh inputs",
    )

    def resolved_start_date(self, today: str | None = None) -> str:
        """The first simulated day; 'auto' makes the last simulated day today."""
        import datetime as dt

        if self.start_date != "auto":
            dt.date.fromisoformat(self.start_date)
            return self.start_date
        end = dt.date.fromisoformat(today) if today else dt.datetime.now(dt.UTC).date()
        return (end - dt.timedelta(days=self.days - 1)).isoformat()


class SearchSpace(_Section):
    """Optuna search space for one family: name -> [low, high] or list of choices."""

    params: dict[str, list[Any]] = Field(default_factory=dict)


def _default_spaces() -> dict[str, SearchSpace]:
    # Each registered family's own default (see its module in `veloready_pipeline.families`).
    return {name: d.space.model_copy(deep=True) for name, d in _family_defaults().items()}


class TuningSettings(_Section):
    """Optuna configuration shared by the families."""

    sampler: Literal["tpe", "grid"] = "tpe"
    n_trials: int = Field(default=20, ge=1, le=1000)
    grid_points: int = Field(
        default=3, ge=2, le=10, description="points per numeric axis for grid search"
    )
    spaces: dict[Family, SearchSpace] = Field(default_factory=_default_spaces)
    warm_start: bool = Field(default=True, description="enqueue last week's best params")
    zones_max_epochs: int = Field(
        default=150, ge=5, le=10_000, description="epochs cap of a zone-net fine-tune trial"
    )
    injury_max_epochs: int = Field(
        default=60, ge=5, le=10_000, description="epochs cap of an injury-LSTM fine-tune trial"
    )
    population_max_epochs: int = Field(
        default=100, ge=5, le=10_000, description="epochs cap of a population network fit"
    )
    # Mini-batches for the population fit: ~10 optimiser steps per pass over a chunk's
    # pooled rows instead of one. Measured on 5 seeds x 50 realistic athletes, 20
    # trials: injury pooled test AUROC 0.755 mean / 0.726 min (full batch) -> 0.766 /
    # 0.757 (512 rows); zones training CPU -25 %, same pass share within noise.
    population_batch_rows: int = Field(
        default=512, ge=0, le=1_000_000,
        description="rows per mini-batch of a population network fit (0 = full batch)",
    )
    net_patience: int = Field(
        default=10, ge=1, le=10_000, description="epochs without validation gain before stop"
    )
    net_eval_every: int = Field(
        default=5, ge=1, le=1000, description="epochs per validation check / pruning report"
    )
    recovery_population_trials: int | None = Field(
        default=None, ge=1, le=1000,
        description="Optuna trials of the recovery population model, tuned once per batch "
        "on the pooled validation parts (default: n_trials)",
    )
    recovery_personal_tuning_min_rows: int = Field(
        default=365, ge=1, le=100_000,
        description="training rows a rider needs before their personal recovery trees are "
        "tuned on their own validation part (fewer: fixed modest settings)",
    )
    net_pick: Literal["batch", "athlete"] = Field(
        default="batch",
        description="networks: every athlete uses the trial with the best mean validation "
        "loss (batch) or its own best trial (athlete; noisier with few validation rows)",
    )


    @field_validator("spaces", mode="before")
    @classmethod
    def _merge_spaces(cls, value: Any) -> Any:
        # Field by field: a family not given keeps its default space, a parameter not
        # given keeps its default range; a parameter is fixed with a one-choice list.
        if not isinstance(value, dict):
            return value
        out: dict[Any, Any] = {k: v.model_dump() for k, v in _default_spaces().items()}
        for fam, space in value.items():
            given = space.model_dump(exclude_unset=True) if isinstance(space, SearchSpace) \
                else space
            if isinstance(given, dict) and isinstance(out.get(fam), dict):
                params = given.get("params")
                merged = dict(out[fam]) | given
                if isinstance(params, dict):
                    merged["params"] = out[fam]["params"] | params
                out[fam] = merged
            else:
                out[fam] = given
        return out

    @field_validator("spaces")
    @classmethod
    def _known_params(cls, value: dict[Family, SearchSpace]) -> dict[Family, SearchSpace]:
        for fam, space in value.items():
            known = _family_defaults()[fam].space_params
            unknown = sorted(set(space.params) - known)
            if unknown:
                raise ValueError(
                    f"unknown {fam} hyper-parameter(s) {', '.join(unknown)}; known: "
                    f"{', '.join(sorted(known))}")
        return value


class GateThresholds(_Section):
    """Thresholds for one family. Unset metrics are not gated."""

    rmse_max: float | None = Field(default=None, gt=0)
    mae_max: float | None = Field(default=None, gt=0)
    r2_min: float | None = Field(default=None, le=1)
    auroc_min: float | None = Field(default=None, ge=0, le=1)
    min_events: int | None = Field(
        default=None, ge=1, le=100_000,
        description="injury: fewest distinct test-part events (pooled over the batch) for "
        "an AUROC to count as evidence; fewer fails the ranking check",
    )
    must_beat_baselines: bool = True
    ftp_test_noise_pct: float | None = Field(
        default=None, gt=0, le=20,
        description="zones: an FTP test's measurement noise (SD, % of FTP), the margin of "
        "the per-rider non-inferiority check against the last test; unset = estimated "
        "from the batch's training-part tests (features_nets.estimate_ftp_test_noise_pct)",
    )


def _default_gates() -> dict[str, GateThresholds]:
    # Each registered family's own default (see its module in `veloready_pipeline.families`).
    return {name: d.gates.model_copy(deep=True) for name, d in _family_defaults().items()}


def _default_quantizations() -> list[Literal["linear8", "palette4"]]:
    return ["linear8", "palette4"]


class ExportSettings(_Section):
    """Core ML / ONNX export and OTA publication."""

    minimum_ios: str = "17.0"
    quantizations: list[Literal["linear8", "palette4"]] = Field(
        default_factory=_default_quantizations
    )
    max_size_ratio: float = Field(
        default=0.5, gt=0, le=1,
        description="a quantized network package ships only if at most this share of the "
        "float32 package's bytes (the point of quantizing for an OTA download)",
    )
    ota_validity_days: float = Field(
        default=30.0, gt=0, le=365,
        description="a signed OTA manifest expires this many days after it is issued "
        "(re-runs renew it once half of that has passed); the app then uses its rules",
    )


class BriefSettings(_Section):
    """Daily brief generation."""

    provider: Literal["auto", "rules", "llm"] = "auto"
    model: str = "gpt-4o-mini"
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=300, ge=16, le=2048)  # a structured (JSON) brief
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    prompt_version: str = "v2"
    concurrency: int = Field(default=16, ge=1, le=512)
    requests_per_minute: int = Field(default=3000, ge=1, le=1_000_000)
    max_retries: int = Field(default=4, ge=0, le=20)
    timeout_s: float = Field(default=20.0, gt=0, le=600)
    budget_usd: float = Field(default=5.0, ge=0)
    use_batch_api: bool = False
    api_key_block: str | None = Field(
        default=None, description="Prefect Secret block holding the key (used if the env is unset)"
    )
    retry_base_s: float = Field(
        default=0.5, ge=0, le=60, description="first backoff delay; doubles per retry, jittered"
    )
    retry_max_s: float = Field(default=20.0, ge=0, le=600, description="longest backoff delay")
    chunk_size: int = Field(
        default=250, ge=1, le=100_000, description="athletes per brief task (a handful of tasks)"
    )
    valid_hours: float = Field(default=24.0, gt=0, le=24 * 30, description="stored brief TTL")
    max_input_age_days: int = Field(
        default=1, ge=0, le=365, description="newest row may be this many days before the date"
    )
    key_suffix: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="extra store-key variant"
    )
    usd_per_1m_input_tokens: float | None = Field(
        default=None, ge=0, description="price override; default from the model price table"
    )
    usd_per_1m_output_tokens: float | None = Field(default=None, ge=0)
    batch_poll_s: float = Field(default=30.0, gt=0, le=3600)
    batch_timeout_s: float = Field(default=86_400.0, gt=0, le=7 * 86_400)
    prompt_dir: str | None = Field(
        default=None,
        description="folder with system_prompt_<v>.md + few_shot_<v>.yaml (default: packaged)",
    )


class RowTolerance(_Section):
    """Largest share of an athlete's bad rows per rule before the athlete is quarantined.

    Below it the bad rows are masked (range, type) or dropped (parse, missing date,
    duplicate date), reported, and the athlete trains on the rest. Shares are per
    athlete in the training window: masked values over the column's readings, dropped
    rows over the athlete's rows. Great Expectations' ``mostly`` is 1 - tolerance.
    """

    range: float = Field(default=0.05, ge=0, le=1, description="values outside their range")
    type: float = Field(default=0.05, ge=0, le=1, description="values that are not numbers")
    parse: float = Field(default=0.05, ge=0, le=1, description="rows the source could not read")
    missing_date: float = Field(default=0.05, ge=0, le=1, description="rows without a date")
    duplicate_date: float = Field(
        default=0.05, ge=0, le=1, description="rows of a day that appears twice (all copies)"
    )


class ValidationSettings(_Section):
    """Limits of the Great Expectations validation stage (`veloready_pipeline.validation`)."""

    row_tolerance: RowTolerance = Field(default_factory=RowTolerance)
    future_days: int = Field(
        default=2, ge=0, le=3650,
        description="rows dated more than this many days after the as-of date (or today) "
        "quarantine their athlete",
    )

    max_gap_days: int = Field(
        default=14, ge=0, le=3650,
        description="most consecutive days without a row; history before a longer gap is "
        "not used (quarantine if fewer than min_history_days remain)",
    )
    max_missing_rates: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=dict,
        description="column -> largest allowed share of null values (overrides the schema)",
    )

    @field_validator("max_missing_rates")
    @classmethod
    def _known_columns(cls, value: dict[str, float]) -> dict[str, float]:
        if value:
            from veloready_pipeline.schema import COLUMNS_BY_NAME

            unknown = sorted(set(value) - set(COLUMNS_BY_NAME))
            if unknown:
                raise ValueError(f"unknown canonical column(s) {', '.join(unknown)}")
        return value


class ExecutionSettings(_Section):
    """How work is spread: chunks of athletes per task, local or Dask."""

    chunk_size: int = Field(default=50, ge=1, le=10_000)
    dask_address: str | None = Field(default=None, description="tcp://host:8786 to use Dask")
    local_workers: int = Field(default=1, ge=1, le=64)
    torch_threads: int = Field(default=1, ge=1, le=64)
    max_in_flight: int = Field(
        default=0, ge=0, le=10_000,
        description="training chunks submitted but not collected at once (bounds memory); "
        "0 = two per local worker, 32 on an existing Dask cluster",
    )


class RolloutSettings(_Section):
    """Staged OTA rollout of a new champion (see `veloready_pipeline.lifecycle.rollout`)."""

    initial_percent: int = Field(
        default=10, ge=1, le=100, description="share of an athlete's devices a new champion gets"
    )


class MonitoringSettings(_Section):
    """Live monitoring of champions against the outcomes that arrive after them."""

    window_days: int = Field(default=14, ge=3, le=365, description="rolling window of outcomes")
    min_outcomes: int = Field(
        default=7, ge=1, le=365, description="outcomes a window needs before it can flag drift"
    )
    mae_ratio: float = Field(
        default=1.5, gt=1.0, le=10.0, description="drift when live MAE > ratio x test MAE"
    )
    persist_days: int = Field(
        default=3, ge=1, le=365, description="consecutive days a rule must break to flag drift"
    )
    confidence_z: float = Field(
        default=1.645, ge=0, le=5,
        description="standard errors by which a window must break a rule (0: plain compare)",
    )
    drift_action: Literal["none", "retrain", "rollback"] = Field(
        default="none", description="what a drift flag triggers besides the artifact"
    )
    retrain_deployment: str | None = Field(
        default=None,
        description="'flow/deployment' to run for retraining; default: a direct subflow call",
    )
    max_catch_up_days: int = Field(
        default=60, ge=1, le=3650, description="most days of missed predictions stored per run"
    )


class UISettings(BaseModel):
    """Where people look at the runs: links in artifacts and the README's UI commands."""

    model_config = ConfigDict(frozen=True)

    mlflow_url: str = Field(
        default="http://127.0.0.1:5000",
        description="base URL of the MLflow UI (`mlflow ui --port 5000`) used for links to "
                    "runs and model versions in the Prefect artifacts",
    )
    mlflow_port: int = Field(default=5000, ge=1, le=65535, description="`mlflow ui --port`")
    prefect_port: int = Field(
        default=4200, ge=1, le=65535,
        description="`prefect server start --port` (PREFECT_SERVER_API_PORT)")


class Settings(BaseSettings):
    """The whole pipeline's configuration (frozen once validated, see `_Section`)."""

    model_config = SettingsConfigDict(
        env_prefix="VELOREADY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    seed: int = Field(default=7, ge=0, le=2**31 - 1)
    families: list[Family] = Field(default_factory=lambda: list(family_names()))
    min_history_days: int = Field(default=90, ge=14, le=3650)
    max_history_days: int = Field(
        default=730, ge=14, le=36_500,
        description="training window: at most this many days up to each athlete's last row",
    )
    recovery_target: str = Field(
        default="recovery_score", description="canonical column predicted for tomorrow"
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default sqlite under paths.mlflow_dir"
    )
    artifact_root: str | None = Field(default=None, description="MLflow artifact root")
    registry_prefix: str = "veloready"
    paths: PathSettings = Field(default_factory=PathSettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    tuning: TuningSettings = Field(default_factory=TuningSettings)
    gates: dict[Family, GateThresholds] = Field(default_factory=_default_gates)
    export: ExportSettings = Field(default_factory=ExportSettings)
    briefs: BriefSettings = Field(default_factory=BriefSettings)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    review_mode: Literal["auto", "manual"] = "auto"
    review_timeout_s: int = Field(
        default=86_400, ge=10, le=30 * 86_400,
        description="how long a paused weekly run waits for a reviewer before giving up",
    )
    review_poll_s: int = Field(
        default=10, ge=1, le=600, description="how often a paused run checks for a decision"
    )
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    ui: UISettings = Field(default_factory=UISettings)

    @field_validator("families")
    @classmethod
    def _unique_families(cls, value: list[Family]) -> list[Family]:
        if not value:
            raise ValueError("at least one family must be trained")
        return list(dict.fromkeys(value))

    @field_validator("gates", mode="before")
    @classmethod
    def _merge_gates(cls, value: Any) -> Any:
        # Field by field: a threshold not given keeps its default (``null`` turns one
        # off), a family not given keeps all of its defaults.
        if not isinstance(value, dict):
            return value
        out: dict[Any, Any] = {k: v.model_dump() for k, v in _default_gates().items()}
        for fam, given in value.items():
            if isinstance(given, GateThresholds):
                given = given.model_dump(exclude_unset=True)
            if isinstance(given, dict) and isinstance(out.get(fam), dict):
                out[fam] = out[fam] | given
            else:
                out[fam] = given
        return out

    @model_validator(mode="after")
    def _history_window(self) -> Settings:
        if self.max_history_days < self.min_history_days:
            raise ValueError(f"max_history_days ({self.max_history_days}) must be at least "
                             f"min_history_days ({self.min_history_days})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments win over the environment, which wins over the YAML file
        # (the file is passed in as init kwargs underneath explicit ones by `load_settings`).
        return (init_settings, env_settings)

    def resolve(self, path: Path) -> Path:
        """An absolute path for a configured location."""
        return path if path.is_absolute() else repo_root() / path

    def mlflow_tracking_uri(self) -> str:
        """The configured tracking URI, or SQLite under `paths.mlflow_dir`."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.resolve(self.paths.mlflow_dir) / 'mlflow.db'}"

    def mlflow_artifact_root(self) -> str:
        """Where MLflow stores artifacts for experiments this pipeline creates."""
        if self.artifact_root:
            return self.artifact_root
        return (self.resolve(self.paths.mlflow_dir) / "artifacts").as_uri()

    def brief_store(self) -> str:
        """SQLAlchemy URL of the brief store."""
        if self.paths.brief_store_url:
            return self.paths.brief_store_url
        return f"sqlite:///{self.resolve(self.paths.data_dir) / 'briefs.db'}"



@dataclass(frozen=True)
class TrainingConfig:
    """The part of `Settings` one family's trainer reads (`models.recovery`,
    `models.zones`, `models.injury`, `models.net_tuning`), cut once by the family
    (`families.base.ModelFamily.training_config`); the trainers never see the rest.

    ``family``: whose ``gates`` and search ``space`` these are; ``seed``: the run seed
    every per-athlete seed derives from; ``tuning``: sampler, trial budget, epochs,
    warm start, pick; ``execution``: ``chunk_size`` and ``torch_threads`` of the net
    trainers; ``min_history_days`` / ``recovery_target``: what the recovery dataset
    needs.
    """

    family: str
    seed: int
    tuning: TuningSettings
    gates: GateThresholds
    space: dict[str, list[Any]]
    execution: ExecutionSettings
    min_history_days: int
    recovery_target: str

    @classmethod
    def from_settings(cls, settings: Settings, family: str) -> TrainingConfig:
        """``family``'s training section of ``settings`` (KeyError if it has no gates
        or search space there)."""
        return cls(family=family, seed=settings.seed, tuning=settings.tuning,
                   gates=settings.gates[family], space=settings.tuning.spaces[family].params,
                   execution=settings.execution, min_history_days=settings.min_history_days,
                   recovery_target=settings.recovery_target)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    config_file: str | Path | None = None, **overrides: Any
) -> Settings:
    """Build and validate the settings, merging every source field by field.

    Order of precedence: ``overrides`` > ``VELOREADY_*`` environment > YAML file
    (``config_file`` or ``$VELOREADY_CONFIG``) > defaults.

    Raises:
        ConfigError: one line naming the key and its origin (file, ``VELOREADY_*`` name
            or argument): an unknown key at any depth, a bad value, a missing or
            unreadable file, invalid YAML.
    """
    file_values: dict[str, Any] = {}
    label = ""
    path = config_file or os.environ.get("VELOREADY_CONFIG")
    if path:
        label = (f"config file {path}" if config_file
                 else f"config file {path} (VELOREADY_CONFIG)")
        file_values = read_config_file(path, label)
    env_values = env_settings()
    merged = _deep_merge(_deep_merge(file_values, env_values), overrides)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, overrides, env_values, file_values,
                                          label)) from exc


def read_config_file(path: str | Path, label: str | None = None) -> dict[str, Any]:
    """The top-level mapping of a YAML settings file (``ConfigError`` naming the file)."""
    p = Path(path)
    label = label or f"config file {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{label} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{label} is a folder, not a YAML file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_text(exc, label)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must hold a mapping of settings at the top level, "
                          f"not a {type(data).__name__}")
    return data


def yaml_error_text(exc: Exception, label: str) -> str:
    """One line for a YAML syntax error: the file, line and column, and the problem."""
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{label}{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")


def setting_env_names() -> list[str]:
    """The ``VELOREADY_*`` environment names meant as settings."""
    out = []
    for name in os.environ:
        up = name.upper()
        if (up.startswith("VELOREADY_") and up not in NON_SETTING_ENV
                and not up.startswith(NON_SETTING_ENV_PREFIXES)):
            out.append(name)
    return sorted(out)


def env_settings() -> dict[str, Any]:
    """The settings given by ``VELOREADY_*`` names, as a nested dict (not validated).

    An unknown top-level name is an error here; unknown nested keys are refused by
    validation (every section forbids extra keys) and named by `describe_errors`.
    """
    names = setting_env_names()
    for name in names:
        top = name[len("VELOREADY_"):].split("__", 1)[0].lower()
        if top not in Settings.model_fields:
            raise ConfigError(f"unknown setting {name} in the environment: there is no "
                              f"setting {top!r}{_did_you_mean(top, list(Settings.model_fields))}")
    if not names:
        return {}
    try:
        return EnvSettingsSource(Settings)()
    except SettingsError as exc:
        import re

        found = re.search(r'field "([^"]+)"', str(exc))
        field = found.group(1) if found else ""
        env = next((n for n in names if n.upper() == f"VELOREADY_{field}".upper()), field)
        raise ConfigError(f"{env}={os.environ.get(env, '')!r} in the environment is not "
                          f"valid JSON (list and mapping settings take JSON, e.g. "
                          f"'[\"recovery\"]')") from exc


def describe_errors(exc: ValidationError, overrides: dict[str, Any], env: dict[str, Any],
                    file_values: dict[str, Any], file_label: str) -> str:
    """One line naming each invalid key, its value and where it came from."""
    parts = []
    errors = exc.errors()
    for err in errors[:5]:
        loc = list(err["loc"])
        is_key = bool(loc) and loc[-1] == "[key]"
        if is_key:
            loc = loc[:-1]
        key = _dotted(loc)
        origin = _origin(loc, overrides, env, file_values, file_label)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1])
            parts.append(f"unknown setting {key}{origin}"
                         f"{_did_you_mean(str(loc[-1]), known)}")
        elif is_key:
            parts.append(f"unknown key {key}{origin}: {msg[:1].lower()}{msg[1:]}")
        else:
            value = err.get("input")
            shown = f" = {value!r}" if isinstance(value, str | int | float | bool) else ""
            parts.append(f"{key}{shown}{origin}: {msg}")
    if len(errors) > 5:
        parts.append(f"and {len(errors) - 5} more")
    return "; ".join(parts)


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _has_path(values: Any, loc: list[Any]) -> bool:
    for part in loc:
        if isinstance(values, dict) and part in values:
            values = values[part]
        elif isinstance(values, list) and isinstance(part, int) and part < len(values):
            values = values[part]
        else:
            return False
    return True


def _origin(loc: list[Any], overrides: dict[str, Any], env: dict[str, Any],
            file_values: dict[str, Any], file_label: str) -> str:
    if _has_path(overrides, loc):
        return " (argument)"
    if _has_path(env, loc):
        names = {n.upper(): n for n in setting_env_names()}
        for end in range(len(loc), 0, -1):
            candidate = "VELOREADY_" + "__".join(str(p) for p in loc[:end])
            if candidate.upper() in names:
                return f" (from {names[candidate.upper()]})"
        return " (environment)"
    if file_label and _has_path(file_values, loc):
        return f" (in {file_label})"
    return ""


def _fields_at(loc: list[Any]) -> list[str]:
    """The field names of the settings section at ``loc`` (best effort, for hints)."""
    import typing

    model: Any = Settings
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is not None and part in fields:
            ann = fields[part].annotation
        elif fields is None and isinstance(model, type(dict[str, int])):
            ann = typing.get_args(model)[-1]  # a dict's value type: skip the key
        else:
            return []
        model = next((a for a in (ann, *typing.get_args(ann))
                      if isinstance(a, type) and issubclass(a, BaseModel)
                      or typing.get_origin(a) is dict), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _did_you_mean(name: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
