"""Flow featurize: the DVC stage of the same name runs `python -m flows.featurize`.

With `runtime.executor: dask` the images not yet in the feature cache are cut into shards that
Prefect's DaskTaskRunner maps onto the workers of a Dask cluster (flows/_dask.py: a LocalCluster
of `runtime.dask_workers` processes, or the scheduler at `runtime.dask_address` /
$DASK_SCHEDULER_ADDRESS, whose workers must see the project folder and the cache at the same
path). The workers write into the same content-addressed cache; the stage then assembles the
feature matrices from it exactly as a single-process run does.
"""

from __future__ import annotations

from prefect import flow, unmapped

from flows._dask import dask_runner
from pipeline_lib.config import Params
from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS, embed_shard_task, load_params_task, plan_shards_task


@flow(name="featurize")
def featurize(root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    params = load_params_task(paths)
    computed = 0
    if params.runtime.executor == "dask":
        shards = plan_shards_task(params, paths)
        if shards:
            computed = featurize_on_dask.with_options(task_runner=dask_runner(params))(shards, params, paths)
    return STAGE_TASKS["featurize"](params, paths, computed_by_workers=computed)


@flow(name="featurize-on-dask")
def featurize_on_dask(shards: list, params: Params, paths: Paths) -> int:
    futures = embed_shard_task.map(shards, params=unmapped(params), paths=unmapped(paths))
    return sum(f.result() for f in futures)


if __name__ == "__main__":
    from flows._cli import run

    run(featurize)
