"""Flow ingest: the DVC stage of the same name runs `python -m flows.ingest`.

With `runtime.executor: dask` the files to decode are cut into shards of `runtime.shard_size` that
Prefect's DaskTaskRunner maps onto the workers of a Dask cluster (flows/_dask.py); each worker
decodes and validates its files as the stage would and leaves the items in the project's
`.cache/ingest-decoded` (shared storage). The stage then reads those instead of decoding again and
does everything that needs the whole data set (duplicates, classes, splits, the manifest) exactly
as a single-process run does.
"""

from __future__ import annotations

from prefect import flow, unmapped

from flows._dask import dask_runner
from pipeline_lib.config import Params
from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS, decode_shard_task, load_params_task, plan_ingest_shards_task


@flow(name="ingest")
def ingest(root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    params = load_params_task(paths)
    if params.runtime.executor == "dask":
        shards = plan_ingest_shards_task(params, paths)
        if shards:
            ingest_on_dask.with_options(task_runner=dask_runner(params))(shards, params, paths)
            return STAGE_TASKS["ingest"](params, paths, decoded=paths.ingest_scratch)
    return STAGE_TASKS["ingest"](params, paths)


@flow(name="ingest-on-dask")
def ingest_on_dask(shards: list, params: Params, paths: Paths) -> int:
    futures = decode_shard_task.map(shards, params=unmapped(params), paths=unmapped(paths))
    return sum(f.result() for f in futures)


if __name__ == "__main__":
    from flows._cli import run

    run(ingest)
