"""``python -m veloready_pipeline.cli``: the same as the ``veloready`` command."""

from veloready_pipeline.cli import app

app()
