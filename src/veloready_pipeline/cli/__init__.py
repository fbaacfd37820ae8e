"""`veloready` command line: simulate, train, briefs, OTA checks, registry and the main job.

One module per command group: `train` (simulate, train, backfill, main, report,
schema), `ota` (verify, promote), `registry` (review, rollback), `monitor`, `briefs`;
`errors` turns every failure into one line and an exit code (2 for a user mistake,
``--debug`` adds the traceback), `checks` finds mistakes before anything heavy is
imported, `project` finds the project's ``flows/`` and loads a flow by entrypoint (the
library never imports ``flows``, ``tasks`` or ``deployments``).

Commands import their flows lazily, so `veloready --help` stays fast and nothing
(Prefect, MLflow) is touched until a command runs.
"""

from __future__ import annotations

from veloready_pipeline.cli import briefs, monitor, ota, registry, train
from veloready_pipeline.cli.errors import VeloreadyApp

__all__ = ["app"]

app = VeloreadyApp(add_completion=False, no_args_is_help=True,
                   help="VeloReady Pipeline: per-athlete models, gated, registered, shipped. "
                   "Add --debug anywhere for tracebacks.")
app.add_typer(ota.ota_app, name="ota")
app.add_typer(registry.registry_app, name="registry")
app.command("monitor")(monitor.monitor)
app.command("simulate")(train.simulate)
app.command("train")(train.train)
app.command("backfill")(train.backfill)
app.command("main")(train.main_job)
app.command("report")(train.report)
app.command("schema")(train.schema)
app.command("briefs")(briefs.briefs_command)
