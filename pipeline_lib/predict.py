"""Batch prediction with a registered model: ``models:/<name>@champion`` by default.

What the input is depends on the model's modality (its MLflow metadata; pipeline_lib.modalities):
an image model takes a folder of images (searched recursively) or a CSV with a ``path`` column
(relative to the CSV's folder), each file decoded and validated as ingest does; a text model a CSV
with a ``text`` column, or a text file with one example per line. An input that cannot be used is
skipped and listed with the reason in the report, never fatal. The logged model carries its
preprocessing and the class names. When the model's run holds an evaluation with a fitted
temperature, ``confidence`` and the top-k probabilities are temperature-scaled;
``raw_confidence`` is the model's own probability (what evaluate's predictions.csv shows).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from . import atomic, modalities
from .errors import PipelineError, TransientError, is_unreachable
from .prediction import LoadedModel


def check_request(source: str | Path, batch_size: int, top_k: int) -> None:
    """What can be checked before the model loads (seconds): the input exists, the sizes are sane."""
    if not Path(source).exists():
        raise PipelineError(f"predict: {source} does not exist: give a folder of images, a CSV with a `path` (images) "
                            "or `text` column, or a text file with one example per line")
    if batch_size < 1 or top_k < 1:
        raise PipelineError(f"predict: --batch-size ({batch_size}) and --top-k ({top_k}) must be at least 1")


def model_uri(model: str | None, default_name: str) -> str:
    """A model URI from what the user typed: a full ``models:/``/``runs:/`` URI, an alias
    (``champion``) or a version number of the project's registered model; default the champion."""
    if not model:
        return f"models:/{default_name}@champion"
    if ":/" in model:
        return model
    return f"models:/{default_name}/{model}" if model.isdigit() else f"models:/{default_name}@{model}"


def load_registered(model_uri: str, tracking_uri: str) -> LoadedModel:
    """The logged classifier, its classes and resolution, and the temperature its run fitted.
    Nothing is left in the system's temporary folder (the files are read from a scratch folder
    that is removed)."""
    import mlflow

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise PipelineError(f"predict: no MLflow store at {tracking_uri}: train a model first (`make run` or "
                            "`dvc repro`), or set MLFLOW_TRACKING_URI to the store that holds it.")
    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="predict-model-") as scratch:
        try:
            info = mlflow.models.get_model_info(model_uri)
            modality = modalities.of_model(info.metadata)
            model = modality.load_model(model_uri, scratch)
        except Exception as exc:  # noqa: BLE001 - unknown alias/version, unreachable server
            message = (f"predict: cannot load {model_uri} from {tracking_uri}: {str(exc).splitlines()[0]}. "
                       "List versions and aliases in the MLflow UI (Models tab).")
            raise (TransientError if is_unreachable(exc) else PipelineError)(message) from None
        temperature = None
        if info.run_id:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path="reports/metrics.json",
                                                           dst_path=scratch)
                temperature = json.loads(Path(path).read_text()).get("calibration", {}).get("temperature")
            except Exception:  # noqa: BLE001 - a model logged without an evaluation: no temperature
                temperature = None
    return LoadedModel(model=model, classes=list(info.metadata["classes"]),
                       resolution=int(info.metadata.get("resolution") or 0), temperature=temperature,
                       uri=model_uri, modality=modality.name)


def read_inputs(loaded: LoadedModel, source: Path) -> list:
    """What ``source`` holds for this model's modality (image files; (where, text) pairs; ...)."""
    return modalities.get(loaded.modality).read_inputs(source)


def predict_items(loaded: LoadedModel, items: list, batch_size: int = 64, top_k: int = 3
                  ) -> tuple[pd.DataFrame, list[dict]]:
    """(the predictions table in input order, the skipped inputs with reason and fix)."""
    return modalities.get(loaded.modality).predict(loaded, items, batch_size, top_k)


_WORKER_MODELS: dict[tuple[str, str], LoadedModel] = {}


def predict_shard(model_uri: str, tracking_uri: str, items: list, batch_size: int, top_k: int
                  ) -> tuple[pd.DataFrame, list[dict]]:
    """One shard on a Dask worker: the model is loaded from MLflow once per worker process (the
    store must be reachable from the worker: a tracking server, or sqlite on shared storage)."""
    key = (model_uri, tracking_uri)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = load_registered(model_uri, tracking_uri)
    return predict_items(_WORKER_MODELS[key], items, batch_size, top_k)


def write_predictions(loaded: LoadedModel, files: list, out: Path, batch_size: int = 64, top_k: int = 3,
                      parts: list[tuple[pd.DataFrame, list[dict]]] | None = None, started: float | None = None) -> dict:
    """Predict ``files`` (images, or a text model's (where, text) pairs) and write the table (.csv or
    .parquet, atomically) and a report beside it. ``parts``: the shards' (table, skipped) already
    predicted on a cluster, in input order, since ``started`` (time.perf_counter())."""
    started = time.perf_counter() if started is None else started
    if parts is None:
        parts = [predict_items(loaded, files, batch_size, top_k)]
    frame = pd.concat([table for table, _ in parts], ignore_index=True)
    skipped = [entry for _, entry_list in parts for entry in entry_list]
    seconds = time.perf_counter() - started
    out = Path(out)
    if out.suffix == ".parquet":
        atomic.write_parquet(out, frame)
    else:
        with atomic.atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False)
    report = {"model": loaded.uri, "inputs": len(files), "predicted": len(frame), "skipped": skipped,
              "temperature": loaded.temperature, "seconds": round(seconds, 2),
              "items_per_second":
                  round(len(frame) / seconds, 1) if seconds > 0 else None, "output": str(out)}
    report_file = out.with_name(out.stem + ".report.json")
    atomic.write_json(report_file, report)
    if files and frame.empty:
        first = skipped[0]
        raise PipelineError(f"predict: none of the {len(files)} input(s) could be read (first: {first['path']}: "
                            f"{first['reason']}); every one is listed in {report_file}")
    return report
