"""Checks made before a flow starts: a user mistake costs about a second.

Settings, ``VELOREADY_HOME`` and the configured folders, the data path and its source
(mapping file, mapped columns), families and dates are checked with pydantic, YAML and
pandas only, before Prefect, MLflow or torch are imported. Each mistake is a
`UserError` (one line naming the setting, option or file; exit code 2); ``train`` and
``main`` also write a summary JSON saying the run did not start and why.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from veloready_pipeline.cli.common import csv
from veloready_pipeline.cli.errors import UserError, one_line
from veloready_pipeline.fsio import atomic_write_text


def check_home(settings: Any) -> None:
    """VELOREADY_HOME and every configured folder must be (or can become) folders."""
    from veloready_pipeline.config import repo_root

    raw = os.environ.get("VELOREADY_HOME")
    if raw:
        _check_folder(repo_root(), f"VELOREADY_HOME={raw}")
    names = ["data_dir", "ota_dir", "reports_dir", "quarantine_dir"]
    if not (settings.tracking_uri and settings.artifact_root):
        names.append("mlflow_dir")
    for name in names:
        path = settings.resolve(getattr(settings.paths, name))
        _check_folder(path, f"paths.{name} ({path})")
    key = settings.resolve(settings.paths.signing_key)
    if key.is_dir():
        raise UserError(f"paths.signing_key ({key}) is a folder, not a key file")
    _check_folder(key.parent, f"the folder of paths.signing_key ({key})")


def _check_folder(path: Path, label: str) -> None:
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{label} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{label} is not writable")
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{label}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"{label} cannot be created: {parent} is not writable")
            return


def check_families(families: str | None) -> list[str] | None:
    """The ``--families`` list, every name a registered family (`families.FAMILIES`)."""
    from veloready_pipeline.families import FAMILIES

    if families is None:
        return None
    fams = csv(families) or []
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown or not fams:
        raise UserError(f"--families {families!r}: "
                        + (f"unknown family {', '.join(map(repr, unknown))}" if unknown
                           else "no family named")
                        + f"; choose from {', '.join(FAMILIES.names())}")
    return list(dict.fromkeys(fams))


def check_date(value: str | None, option: str) -> str | None:
    """A calendar date YYYY-MM-DD (returned in that form)."""
    import datetime as dt

    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value.strip()).isoformat()
    except ValueError as exc:
        raise UserError(f"{option} {value!r} is not a calendar date YYYY-MM-DD "
                        f"({exc})") from exc


def check_source_name(source: str | None) -> None:
    """``--source`` names a source the settings know."""
    import typing

    from veloready_pipeline.config import SourceSettings

    names = typing.get_args(SourceSettings.model_fields["name"].annotation)
    if source is not None and source not in names:
        raise UserError(f"--source {source!r} is not a source; choose from "
                        f"{', '.join(names)}")


def check_source(settings: Any, data: str | None, source: str | None,
                 mapping: Path | None) -> None:
    """The data path exists, its source can be told and built, a mapping fits its files.

    ``settings`` already hold ``--mapping`` (given as an override when they were
    loaded); ``mapping`` only says where a mapping path came from in the messages.
    """
    from veloready_pipeline.config import SourceSettings

    check_source_name(source)
    map_label = "--mapping" if mapping is not None else "source.mapping"
    cfg = settings.source
    # The same composition as `ingest.load_data`: --data/--source over the settings.
    if data is not None or source is not None:
        cfg = SourceSettings(**(cfg.model_dump() | {
            "path": data if data is not None else cfg.path,
            "name": source or ("auto" if data is not None else cfg.name),
        }))
    if cfg.mapping is not None and not Path(cfg.mapping).is_file():
        raise UserError(f"{map_label} {cfg.mapping}: "
                        + ("is a folder, not a mapping file" if Path(cfg.mapping).is_dir()
                           else "no such file"))
    if cfg.path is None and cfg.mapping is None:
        return  # synthetic athletes (written on first use)
    label = "--data" if data is not None else "source.path"
    text = str(cfg.path or "")
    if text and "://" not in text and not any(ch in text for ch in "*?["):
        if not Path(text).exists():
            raise UserError(f"{label} {text}: no such file or folder")
    _check_built(cfg)


def _check_built(cfg: Any) -> None:
    """The source can be built from ``cfg`` and a mapping's columns are in its files."""
    import yaml

    from veloready_pipeline.config import yaml_error_text
    from veloready_pipeline.sources import GenericCsvSource, make_source

    try:
        built = make_source(cfg)
        if isinstance(built, GenericCsvSource):
            check_mapped_columns(built)
    except yaml.YAMLError as exc:
        raise UserError(yaml_error_text(exc, f"mapping file {cfg.mapping}")) from exc
    except (ValueError, OSError) as exc:
        raise UserError(one_line(exc).replace("Value error, ", "")) from exc


def check_mapped_columns(source: Any) -> None:
    """Every column a mapping names is in the header of at least one of its files."""
    from veloready_pipeline.sources.common import read_csv_table

    files = source.files()
    m = source.mapping
    headers = {f: set(read_csv_table(f, encoding=m.encoding, delimiter=m.delimiter).header)
               for f in files}
    seen = set().union(*headers.values())
    wanted = [("date.column", m.date.column)]
    if m.athlete.column:
        wanted.append(("athlete.column", m.athlete.column))
    wanted += [(f"fields.{name}", spec.column) for name, spec in m.fields.items()]
    absent = [f"{key} {col!r}" for key, col in wanted if col not in seen]
    if absent:
        first = files[0]
        shown = sorted(headers[first])
        raise UserError(
            f"mapping file {source.mapping_path or '(inline)'}: {', '.join(absent)} "
            f"in the header of none of {len(files)} file(s) (header of {first.name}: "
            f"{', '.join(shown[:12])}{', ...' if len(shown) > 12 else ''})")


def write_not_started(summary_json: Path | None, settings: Any, message: str,
                      command: str) -> Path | None:
    """A summary JSON saying the run did not start and why (best effort).

    Written to ``--summary-json`` when given, else under ``paths.reports_dir`` as
    ``summary-not-started-<UTC time>.json`` when the settings could be read.
    """
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    if summary_json is not None:
        path = summary_json
    elif settings is not None:
        path = (settings.resolve(settings.paths.reports_dir)
                / f"summary-not-started-{now:%Y%m%dT%H%M%SZ}.json")
    else:
        return None
    body = {"status": "not_started", "started": False, "reason": message,
            "command": command, "argv": sys.argv[1:], "checked_at": now.isoformat()}
    try:
        atomic_write_text(path, json.dumps(body, indent=2) + "\n", mode=0o644)
    except OSError:
        return None  # e.g. VELOREADY_HOME is a file: the one-line error says so
    return path
