"""One Prefect task per stage function of pipeline_lib, and the MLflow logging task.

Prefect's own result caching is off (cache_policy=NONE): DVC decides what is stale.
"""

from __future__ import annotations

import pipeline_lib  # noqa: F401  (silences telemetry before Prefect is imported)
from prefect import task
from prefect.cache_policies import NONE

from pipeline_lib.config import Params, Paths, load_params

# Stage modules are imported inside each task, so a stage's process loads only what it needs
# (ingest runs without importing torch).


@task(cache_policy=NONE, name="load_params")
def load_params_task(paths: Paths) -> Params:
    return load_params(paths.root)


@task(cache_policy=NONE, name="ingest")
def ingest_task(params: Params, paths: Paths) -> dict:
    from pipeline_lib import ingest

    return ingest.run(params, paths)


@task(cache_policy=NONE, name="featurize")
def featurize_task(params: Params, paths: Paths) -> dict:
    from pipeline_lib import featurize

    return featurize.run(params, paths)


@task(cache_policy=NONE, name="train_head")
def train_head_task(params: Params, paths: Paths) -> dict:
    from pipeline_lib import train_head

    return train_head.run(params, paths)


@task(cache_policy=NONE, name="evaluate")
def evaluate_task(params: Params, paths: Paths) -> dict:
    from pipeline_lib import evaluate

    return evaluate.run(params, paths)


@task(cache_policy=NONE, name="log_to_mlflow", retries=2, retry_delay_seconds=[2, 8])
def log_to_mlflow_task(params: Params, paths: Paths, run_name: str | None = None) -> str:
    from pipeline_lib import tracking

    return tracking.log_pipeline_run(params, paths, run_name)
