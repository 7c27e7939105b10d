"""featurize throughput: one process vs a Dask LocalCluster of 1 and 2 worker processes.

    .venv/bin/python benchmarks/featurize_dask.py [--workers 1 2] [--shard-size 128]

Reference: the stage in one process (featurize.run, all cores), cold cache. Measured: the same
images embedded by `featurize.embed_shard` (what the Prefect DaskTaskRunner maps in
flows/featurize.py) on a LocalCluster, one thread per worker, cold cache each time; the
cluster's start-up (worker processes importing torch, loading the backbone) is timed apart.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import time

from _common import copy_project

from pipeline_lib.config import load_params, parse_params
from pipeline_lib.paths import Paths
from pipeline_lib.stages import featurize, run_stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shard-size", type=int, default=128)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    root = copy_project()
    paths = Paths.for_root(root)
    raw = load_params(root).model_dump()
    raw["data"]["shots_per_class"] = None  # the whole sample: 2,000 images
    raw["augment"]["copies"] = 0
    params = parse_params(raw)
    with contextlib.redirect_stderr(io.StringIO()):
        run_stages(params, paths, last="augment")
    cache = paths.cache_dir(params)
    shutil.rmtree(cache, ignore_errors=True)
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        n = featurize.run(params, paths)["computed"]
    single = n / (time.perf_counter() - started)
    print(f"{n} images, {params.backbone.name} blocks={params.backbone.blocks} @ {params.backbone.resolution}px")
    print(f"  one process (reference)      {single:7.1f} img/s")
    for workers in args.workers:
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          env={"OMP_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
            client.run(lambda: __import__("torch"))  # workers up, torch imported
            startup = time.perf_counter() - t0
            shards = featurize.plan_shards(params, paths, args.shard_size)
            t1 = time.perf_counter()
            done = sum(client.gather(client.map(featurize.embed_shard, [params] * len(shards),
                                                [paths] * len(shards), shards, pure=False)))
            rate = done / (time.perf_counter() - t1)
        print(f"  dask, {workers} worker(s)          {rate:7.1f} img/s  ({rate / single:.2f}x the reference; "
              f"cluster start {startup:.1f} s, first shard includes each worker's model load)")


if __name__ == "__main__":
    main()
