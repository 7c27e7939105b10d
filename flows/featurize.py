"""Flow featurize: the DVC stage of the same name runs `python -m flows.featurize`.

With `runtime.executor: dask` the images not yet in the feature cache are cut into shards that
Prefect's DaskTaskRunner maps onto the workers of a Dask cluster (flows/_dask.py: a LocalCluster
of `runtime.dask_workers` processes, or the scheduler at `runtime.dask_address` /
$DASK_SCHEDULER_ADDRESS, whose workers must see the project folder and the cache at the same
path). The workers write into the same content-addressed cache; the stage then assembles the
feature matrices from it exactly as a single-process run does.
"""

from __future__ import annotations

from prefect import flow

from flows._dask import run_on_dask
from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS, load_params_task


@flow(name="featurize")
def featurize(root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    params = load_params_task(paths)
    computed = run_on_dask("featurize", params, paths) if params.runtime.executor == "dask" else 0
    return STAGE_TASKS["featurize"](params, paths, computed_by_workers=computed)


if __name__ == "__main__":
    from flows._cli import run

    run(featurize)
