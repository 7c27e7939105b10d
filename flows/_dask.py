"""The Dask cluster of `runtime.executor: dask` (ingest's files, featurize's uncached items,
`flows.predict`'s inputs): Prefect's DaskTaskRunner on the scheduler at $DASK_SCHEDULER_ADDRESS or
`runtime.dask_address`, else on a LocalCluster of `runtime.dask_workers` processes that share
this machine's cores. Workers of a remote cluster must see the project folder (and the feature
cache, the MLflow store) at the same paths and run the same venv: docs/operations.md."""

from __future__ import annotations

import os

from prefect import flow, unmapped

from pipeline_lib.config import Params
from pipeline_lib.paths import Paths
from pipeline_lib.runtime import thread_budget
from tasks.stages import plan_shards_task, run_shard_task


def dask_address(params: Params) -> str:
    return os.environ.get("DASK_SCHEDULER_ADDRESS") or params.runtime.dask_address


def dask_runner(params: Params):
    from prefect_dask import DaskTaskRunner

    address = dask_address(params)
    if address:
        return DaskTaskRunner(address=address)
    n = params.runtime.dask_workers
    threads = max(1, thread_budget(params.runtime.num_threads) // n)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                          "env": {"OMP_NUM_THREADS": str(threads)}, "dashboard_address": None})


def run_on_dask(stage: str, params: Params, paths: Paths) -> int:
    """The stage's cluster part (tasks.stages.SHARDED): its shards mapped onto the cluster's
    workers; returns how many items they did (0 when there was nothing to do)."""
    shards = plan_shards_task(stage, params, paths)
    if not shards:
        return 0
    return shards_on_dask.with_options(name=f"{stage}-on-dask", task_runner=dask_runner(params))(
        stage, shards, params, paths)


@flow(name="shards-on-dask")
def shards_on_dask(stage: str, shards: list, params: Params, paths: Paths) -> int:
    futures = run_shard_task.map(unmapped(stage), shards, params=unmapped(params), paths=unmapped(paths))
    return sum(f.result() for f in futures)
