"""The Dask cluster of `runtime.executor: dask` (featurize's uncached items, `flows.predict`'s
inputs): Prefect's DaskTaskRunner on the scheduler at $DASK_SCHEDULER_ADDRESS or
`runtime.dask_address`, else on a LocalCluster of `runtime.dask_workers` processes that share
this machine's cores. Workers of a remote cluster must see the project folder (and the feature
cache, the MLflow store) at the same paths and run the same venv: docs/operations.md."""

from __future__ import annotations

import os

from pipeline_lib.config import Params
from pipeline_lib.runtime import thread_budget


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
