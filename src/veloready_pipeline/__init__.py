"""VeloReady Pipeline: per-athlete models, gated, registered and shipped to phones."""

__version__ = "0.1.0"


def load_families() -> None:
    """Register the built-in model families (idempotent).

    Their names and default settings (gate thresholds, search spaces) become known to
    `config`, which calls this the first time it needs them: config never imports the
    families (they import config), and importing the package stays light for
    `veloready --help`.
    """
    import veloready_pipeline.families  # noqa: F401 - its import registers them
