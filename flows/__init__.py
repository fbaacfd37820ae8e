"""Prefect flows of the pipeline.

Importing any flow first points Prefect's logging at the pipeline's own loggers, so
their INFO records (stages, counts, verdicts) reach each run's Logs tab in the UI.
"""

from veloready_pipeline.logs import prefect_logging_env

prefect_logging_env()
