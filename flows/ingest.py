"""Flow ingest: the DVC stage of the same name runs `python -m flows.ingest`.

With `runtime.executor: dask` the files to decode are cut into shards of `runtime.shard_size` that
Prefect's DaskTaskRunner maps onto the workers of a Dask cluster (flows/_dask.py); each worker
decodes and validates its files as the stage would and leaves the items in the project's
`.cache/ingest-decoded` (shared storage). The stage then reads those instead of decoding again and
does everything that needs the whole data set (duplicates, classes, splits, the manifest) exactly
as a single-process run does.
"""

from __future__ import annotations

from prefect import flow

from flows._dask import run_on_dask
from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS, load_params_task


@flow(name="ingest")
def ingest(root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    params = load_params_task(paths)
    if params.runtime.executor == "dask" and run_on_dask("ingest", params, paths):
        return STAGE_TASKS["ingest"](params, paths, decoded=paths.ingest_scratch)
    return STAGE_TASKS["ingest"](params, paths)


if __name__ == "__main__":
    from flows._cli import run

    run(ingest)
