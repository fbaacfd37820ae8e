"""Prefect tasks of the pipeline (also imported on Dask workers: same logging set-up)."""

from veloready_pipeline.logs import prefect_logging_env

prefect_logging_env()
