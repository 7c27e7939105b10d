"""One Prefect task per stage of pipeline_lib, and the MLflow logging task.

Prefect's own result caching is off (cache_policy=NONE): DVC decides what is stale. The tasks that
touch the file system or the tracking server retry twice, 2 then 8 s later, on transient failures
only (pipeline_lib.errors.is_transient: an I/O error that may pass, a server that does not answer);
a stage is safe to repeat (atomic writes, resumable checkpoints). A user mistake fails at once.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from pipeline_lib.config import Params, Paths, load_params
from pipeline_lib.errors import is_transient
from pipeline_lib.stages import STAGES, stage_module

RETRY_DELAYS = [2, 8]


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry only what may pass when tried again."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a state without a readable exception: do not retry
        return False
    return is_transient(exc)


@task(cache_policy=NONE, name="load_params")
def load_params_task(paths: Paths) -> Params:
    return load_params(paths.root)


def _stage_task(stage: str):
    """A task running the stage's ``run``; the module is imported when the task runs, so a stage's
    process loads only what it needs (ingest runs without importing torch)."""

    @task(cache_policy=NONE, name=stage, retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
          retry_condition_fn=retry_if_transient)
    def run_stage(params: Params, paths: Paths, **kwargs) -> dict:
        return stage_module(stage).run(params, paths, **kwargs)

    return run_stage


STAGE_TASKS = {stage: _stage_task(stage) for stage in STAGES}


@task(cache_policy=NONE, name="plan_featurize_shards")
def plan_shards_task(params: Params, paths: Paths) -> list:
    from pipeline_lib.stages import featurize

    return featurize.plan_shards(params, paths, params.featurize.shard_size)


@task(cache_policy=NONE, name="embed_shard", retries=1)
def embed_shard_task(shard: list, params: Params, paths: Paths) -> int:
    """Runs on a Dask worker: embeds one shard into the shared content-addressed cache."""
    from pipeline_lib.stages import featurize

    return featurize.embed_shard(params, paths, shard)


@task(cache_policy=NONE, name="log_to_mlflow", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def log_to_mlflow_task(params: Params, paths: Paths, run_name: str | None = None) -> str:
    from pipeline_lib import tracking

    return tracking.log_pipeline_run(params, paths, run_name)
