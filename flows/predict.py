"""Flow predict: batch predictions with a registered model (the champion by default).

    python -m flows.predict data/new_images                      # -> predictions.csv (+ .report.json)
    python -m flows.predict new.csv --model models:/transfer-classifier@challenger --out preds.parquet
    python -m flows.predict data/new_images --model models:/transfer-classifier/3 --top-k 5
    python -m flows.predict new_reviews.txt                      # a text model: one example per line (or a CSV `text` column)
"""

from __future__ import annotations

import argparse

from prefect import flow

from pipeline_lib.config import load_params
from pipeline_lib.paths import Paths
from pipeline_lib.predict import check_request, model_uri
from tasks.predict import load_model_task, predict_task


@flow(name="predict")
def predict(source: str, out: str = "predictions.csv", model: str | None = None, top_k: int = 3,
            batch_size: int = 64, root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    check_request(source, batch_size, top_k)  # before the model loads (seconds)
    uri = model_uri(model, load_params(paths.root).mlflow.model_name)
    loaded = load_model_task(uri, paths.mlflow_uri)
    return predict_task(loaded, source, out, batch_size, top_k)


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
    args = parser.parse_args()
    report = run(predict, source=args.source, out=args.out, model=args.model, top_k=args.top_k,
                 batch_size=args.batch_size)
    print(f"{report['predicted']} predictions -> {report['output']} ({len(report['skipped'])} skipped; "
          f"{report.get('items_per_second')} per second; model {report['model']})")
