"""Flow predict: batch predictions with a registered model (the champion by default).

    python -m flows.predict data/new_images                      # -> predictions.csv (+ .report.json)
    python -m flows.predict new.csv --model models:/transfer-classifier@challenger --out preds.parquet
    python -m flows.predict data/new_images --model models:/transfer-classifier/3 --top-k 5
    python -m flows.predict new_reviews.txt                      # a text model: one example per line (or a CSV `text` column)
    python -m flows.predict data/new_images --executor dask      # shards on a Dask cluster (runtime.dask_address)

With `runtime.executor: dask` (or `--executor dask`) the inputs are cut into shards of
`runtime.shard_size` that Prefect's DaskTaskRunner maps onto a Dask cluster (flows/_dask.py); each
worker loads the model once from MLflow, and the table is the one a single process writes.
"""

from __future__ import annotations

import argparse
import time

from prefect import flow, unmapped

from flows._dask import dask_runner
from pipeline_lib.config import load_params
from pipeline_lib.paths import Paths
from pipeline_lib.predict import check_request, model_uri
from pipeline_lib.runtime import chunks
from tasks.predict import load_model_task, predict_shard_task, predict_task, read_inputs_task, write_predictions_task


@flow(name="predict")
def predict(source: str, out: str = "predictions.csv", model: str | None = None, top_k: int = 3,
            batch_size: int = 64, root: str | None = None, executor: str | None = None) -> dict:
    paths = Paths.for_root(root)
    check_request(source, batch_size, top_k)  # before the model loads (seconds)
    params = load_params(paths.root)
    uri = model_uri(model, params.mlflow.model_name)
    loaded = load_model_task(uri, paths.mlflow_uri)
    if (executor or params.runtime.executor) != "dask":
        return predict_task(loaded, source, out, batch_size, top_k)
    items = read_inputs_task(loaded, source)
    started = time.perf_counter()
    parts = predict_on_dask.with_options(task_runner=dask_runner(params))(
        chunks(items, params.runtime.shard_size), uri, paths.mlflow_uri, batch_size, top_k) if items else None
    return write_predictions_task(loaded, items, out, batch_size, top_k, parts, started)


@flow(name="predict-on-dask")
def predict_on_dask(parts: list, model_uri: str, tracking_uri: str, batch_size: int, top_k: int) -> list:
    futures = predict_shard_task.map(parts, model_uri=unmapped(model_uri), tracking_uri=unmapped(tracking_uri),
                                     batch_size=unmapped(batch_size), top_k=unmapped(top_k))
    return [f.result() for f in futures]


if __name__ == "__main__":
    from flows._cli import run

    parser = argparse.ArgumentParser(description="Batch prediction with a registered model.")
    parser.add_argument("source", help="a folder of images (recursive) or a CSV with a `path` column; for a text "
                                       "model a CSV with a `text` column or a text file, one example per line")
    parser.add_argument("--out", default="predictions.csv", help=".csv or .parquet (a .report.json lands beside it)")
    parser.add_argument("--model", default=None,
                        help="an alias (champion, challenger), a version number, or a model URI "
                             "(models:/<name>@<alias>, models:/<name>/<version>); default: the champion")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--executor", choices=["local", "dask"], default=None,
                        help="local (this process) or dask (shards on a Dask cluster); default: runtime.executor")
    args = parser.parse_args()
    report = run(predict, source=args.source, out=args.out, model=args.model, top_k=args.top_k,
                 batch_size=args.batch_size, executor=args.executor)
    print(f"{report['predicted']} predictions -> {report['output']} ({len(report['skipped'])} skipped; "
          f"{report.get('items_per_second')} per second; model {report['model']})")
