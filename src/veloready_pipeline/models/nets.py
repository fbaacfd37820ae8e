"""Transitional (issue 17): the export dispatch (`publish.export_one`, moving to
`lifecycle/`) still imports `export_net` from here. The network families now live in
`veloready_pipeline.families` (zones.py, injury.py, nets_common.py); this module goes
when the export dispatch asks the family table itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from veloready_pipeline.config import Settings
from veloready_pipeline.families import FAMILIES
from veloready_pipeline.results import ModelResult


def export_net(result: ModelResult, folder: Path, name: str, settings: Settings) -> dict[str, Any]:
    """The result's family exports it (`families.nets_common.export_torch_net`)."""
    return FAMILIES.get(result.family).export(result, folder, name, settings)
