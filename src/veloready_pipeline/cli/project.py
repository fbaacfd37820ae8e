"""The project's Prefect flows, found and loaded by entrypoint.

The library never imports the top-level ``flows``, ``tasks`` or ``deployments``
packages: they are not installed (the wheel holds ``veloready_pipeline`` only), they
live in the project checkout next to ``src/``. A command runs a flow by its entrypoint,
``flows/weekly_training.py:weekly_training`` (the form Prefect deployments use), taken
relative to the project root: the first of these folders that holds
``flows/__init__.py``:

1. ``VELOREADY_HOME``, when it is the checkout;
2. the checkout this package is imported from (``src/veloready_pipeline`` two levels
   down: an editable install or ``PYTHONPATH=src``), or the folder it was installed
   from (the ``file://`` URL in the distribution's ``direct_url.json``);
3. the working directory.

None of them: `UserError` (one line naming the folders tried, exit code 2).

Why not `prefect.flows.load_flow_from_entrypoint`: it executes the file under a fresh
module name (``weekly_training`` or ``__prefect_loader_<hash>__``), a second module
object beside the ``flows.weekly_training`` that tests, deployments and Dask workers
import by name, so a monkeypatch of ``flows.weekly_training.x`` would not reach the flow
the command runs; it also falls back to a placeholder flow when the file fails to
import. Here the root goes on ``sys.path`` (the flows' own ``from tasks.training import
...`` needs it anyway; spawned Dask workers inherit it) and the module is imported by
name with importlib, so ``sys.modules["flows.weekly_training"]`` is reused: one module
object per process.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from veloready_pipeline.cli.errors import UserError

MARKER = Path("flows") / "__init__.py"


def _installed_from() -> Path | None:
    """The local folder the distribution was installed from, if pip recorded one."""
    from importlib import metadata

    try:
        text = metadata.distribution("veloready-pipeline").read_text("direct_url.json")
        url = json.loads(text or "{}").get("url", "")
    except (metadata.PackageNotFoundError, ValueError, OSError):
        return None
    if not url.startswith("file://"):
        return None
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(url).path))


def candidates() -> list[tuple[str, Path]]:
    """The folders that may be the project root, in the order they are tried."""
    import veloready_pipeline

    out = []
    home = os.environ.get("VELOREADY_HOME")
    if home:
        out.append((f"VELOREADY_HOME={home}", Path(home)))
    package = Path(veloready_pipeline.__file__).resolve().parent
    if package.parent.name == "src":
        out.append(("the checkout of veloready_pipeline", package.parent.parent))
    installed = _installed_from()
    if installed is not None:
        out.append(("the folder veloready-pipeline was installed from", installed))
    out.append(("the working directory", Path.cwd()))
    return out


def project_root() -> Path:
    """The project root: the first candidate folder holding ``flows/__init__.py``."""
    tried = candidates()
    for _label, folder in tried:
        if (folder / MARKER).is_file():
            return folder.resolve()
    where = "; ".join(f"{label} ({folder})" for label, folder in tried)
    raise UserError(f"cannot find the project's flows/ folder (tried {where}): run "
                    "veloready from the project checkout or set VELOREADY_HOME to it")


def load_flow(entrypoint: str) -> Any:
    """The flow at ``entrypoint`` (``flows/<module>.py:<function>``) of the project.

    The module is imported by name (``flows.<module>``) with the project root first on
    ``sys.path``, reusing an already imported one (see the module docstring).
    """
    path, _, name = entrypoint.partition(":")
    module_name = path.removesuffix(".py").replace("/", ".")
    module = sys.modules.get(module_name)
    if module is None:
        root = project_root()
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        module = importlib.import_module(module_name)
        where = Path(module.__file__ or "").resolve()
        if not where.is_relative_to(root):
            raise UserError(f"{module_name} was imported from {where}, not from the "
                            f"project at {root}: another {module_name.split('.')[0]!r} "
                            "package comes first on the Python path")
    return getattr(module, name)
