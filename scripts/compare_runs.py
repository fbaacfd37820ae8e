"""Compare two runs of the main job: run summary JSON and signed OTA manifests.

    .venv/bin/python scripts/compare_runs.py HOME_A HOME_B

HOME_A/HOME_B are two `VELOREADY_HOME`s that each ran `veloready main` (same seed and
config). Prints a unified diff of both runs after removing what differs by nature
between two runs — flow/MLflow run ids, timestamps (issued/expiry/created/set at),
signatures and the homes' own paths — and exits 0 when nothing else differs, 1 when
something does. Model files are compared by the sha256/size the manifests list.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

VOLATILE_KEYS = {"flow_run_id", "started_at", "finished_at", "mlflow_run_id", "issued_at",
                 "expires_at", "created_at", "set_at", "checked_at", "mlflow_run_url",
                 "run_id"}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX32 = re.compile(r"\b[0-9a-f]{32}\b")  # MLflow run ids


def _clean(value: Any, home: str) -> Any:
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE_KEYS else _clean(v, home))
                for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_clean(v, home) for v in value]
    if isinstance(value, str):
        value = value.replace(home, "<HOME>")
        value = UUID.sub("<RUN>", value)
        value = HEX32.sub("<MLFLOW_RUN>", value)
        return TIME.sub("<TIME>", value)
    return value


def _summary(home: Path) -> Any:
    found = sorted((home / "data" / "reports").glob("summary-*.json"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"compare_runs: no data/reports/summary-*.json under {home}")
    doc = json.loads(found[-1].read_text())
    doc.pop("rerun", None)  # state-file bookkeeping of the re-run skip, ids only
    return doc


def _manifests(home: Path) -> dict[str, Any]:
    return {str(p.relative_to(home / "data" / "ota")): json.loads(p.read_text())
            for p in sorted((home / "data" / "ota").glob("*/manifest.json"))}


def lines(home: Path) -> list[str]:
    """The normalised summary and manifests of one home as JSON lines."""
    doc = {"summary": _summary(home), "manifests": _manifests(home)}
    text = json.dumps(_clean(doc, str(home.resolve())), indent=1, sort_keys=True,
                      default=str)
    return text.splitlines()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = (Path(x) for x in argv)
    la, lb = lines(a), lines(b)
    diff = list(difflib.unified_diff(la, lb, str(a), str(b), lineterm="", n=2))
    for line in diff:
        print(line)
    n_models = sum(len(m.get("models", [])) for m in _manifests(a).values())
    print(f"compare_runs: {len(_summary(a)['rows'])} summary rows, {len(_manifests(a))} "
          f"manifests ({n_models} model files); {'identical' if not diff else 'DIFFERENT'} "
          "apart from run ids, timestamps and signatures")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
