"""Flow featurize: the DVC stage of the same name runs `python -m flows.featurize`.

With `featurize.executor: dask` the images not yet in the feature cache are cut into shards that
Prefect's DaskTaskRunner maps onto the workers of a Dask cluster — a LocalCluster of
`featurize.dask_workers` processes, or the scheduler at `featurize.dask_address` /
$DASK_SCHEDULER_ADDRESS (its workers must see the project folder and the cache at the same
path). The workers write into the same content-addressed cache; the stage then assembles the
feature matrices from it exactly as a single-process run does.
"""

from __future__ import annotations

import os

from prefect import flow, unmapped

from pipeline_lib.config import Params
from pipeline_lib.paths import Paths
from pipeline_lib.runtime import available_cpus
from tasks.stages import STAGE_TASKS, embed_shard_task, load_params_task, plan_shards_task


@flow(name="featurize")
def featurize(root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    params = load_params_task(paths)
    computed = 0
    if params.featurize.executor == "dask":
        shards = plan_shards_task(params, paths)
        if shards:
            computed = featurize_on_dask.with_options(task_runner=dask_runner(params))(shards, params, paths)
    return STAGE_TASKS["featurize"](params, paths, computed_by_workers=computed)


@flow(name="featurize-on-dask")
def featurize_on_dask(shards: list, params: Params, paths: Paths) -> int:
    futures = embed_shard_task.map(shards, params=unmapped(params), paths=unmapped(paths))
    return sum(f.result() for f in futures)


def dask_runner(params: Params):
    from prefect_dask import DaskTaskRunner

    address = os.environ.get("DASK_SCHEDULER_ADDRESS") or params.featurize.dask_address
    if address:
        return DaskTaskRunner(address=address)
    n = params.featurize.dask_workers
    threads = max(1, (params.runtime.num_threads or available_cpus()) // n)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                          "env": {"OMP_NUM_THREADS": str(threads)}, "dashboard_address": None})


if __name__ == "__main__":
    from flows._cli import run

    run(featurize)
