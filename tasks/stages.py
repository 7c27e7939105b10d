"""One Prefect task per stage of pipeline_lib, and the MLflow logging task.

Prefect's own result caching is off (cache_policy=NONE): DVC decides what is stale. The tasks that
touch the file system or the tracking server retry twice, 2 then 8 s later, on transient failures
only (pipeline_lib.errors.is_transient: an I/O error that may pass, a server that does not answer);
a stage is safe to repeat (atomic writes, resumable checkpoints). A user mistake fails at once.
"""

from __future__ import annotations

import json

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from pipeline_lib.config import Params, load_params
from pipeline_lib.errors import is_transient
from pipeline_lib.paths import Paths
from pipeline_lib.stages import STAGES, run_stage, stage_module
from pipeline_lib.summary import stage_markdown

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
    def stage_task(params: Params, paths: Paths, **kwargs) -> dict:
        result = run_stage(stage, params, paths, **kwargs)
        publish_report(stage, paths)
        return result

    return stage_task


def publish_report(stage: str, paths: Paths) -> None:
    """The stage's key figures as a markdown artifact of the running flow (Prefect UI: Artifacts)."""
    report = paths.stage_report(stage)
    if report.exists():
        create_markdown_artifact(markdown=stage_markdown(stage, json.loads(report.read_text()), paths),
                                 key=stage.replace("_", "-"), description=f"{stage}: key figures")


STAGE_TASKS = {stage: _stage_task(stage) for stage in STAGES}


# The stages with a part that runs on a Dask cluster (runtime.executor: dask): the function a worker
# runs on one shard of what the stage's plan_shards lists.
SHARDED = {"ingest": "decode_shard",     # decode and validate files into paths.ingest_scratch
           "featurize": "embed_shard"}   # embed items into the content-addressed feature cache


@task(cache_policy=NONE, name="plan_shards")
def plan_shards_task(stage: str, params: Params, paths: Paths) -> list:
    return stage_module(stage).plan_shards(params, paths, params.runtime.shard_size)


@task(cache_policy=NONE, name="run_shard", retries=1)
def run_shard_task(stage: str, shard: list, params: Params, paths: Paths) -> int:
    """Runs on a Dask worker: one shard of the stage's cluster part (SHARDED); returns its item count."""
    return getattr(stage_module(stage), SHARDED[stage])(params, paths, shard)


@task(cache_policy=NONE, name="log_to_mlflow", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def log_to_mlflow_task(params: Params, paths: Paths, run_name: str | None = None) -> str:
    """Log the execution to MLflow, cross-referenced with Prefect: the MLflow run carries the flow
    run ids and the execution id; the flow run gets a link to the MLflow run."""
    from pipeline_lib import tracking
    from tasks.prefect_server import execution_id

    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
            "prefect.root_flow_run_id": str(flow_run.root_flow_run_id or flow_run.id),
            "prefect.execution_id": execution_id()}
    run_id = tracking.log_pipeline_run(params, paths, run_name, tags)
    logged = json.loads(paths.mlflow_run.read_text())
    create_link_artifact(link=logged["run_url"], link_text=f"MLflow run {run_id[:8]}", key="mlflow-run",
                         description="This execution in the MLflow UI (start `mlflow ui` for a local store)")
    return run_id


@task(cache_policy=NONE, name="log_advice", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def log_advice_task(params: Params, paths: Paths) -> str | None:
    """The advice joins the MLflow run evaluate logged (a child run "advise")."""
    from pipeline_lib import tracking

    return tracking.log_advice(params, paths)
