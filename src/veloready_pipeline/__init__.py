"""VeloReady Pipeline: per-athlete models, gated, registered and shipped to phones."""

__version__ = "0.1.0"
