"""Batch prediction with a registered model: ``models:/<name>@champion`` by default.

Inputs: a folder of images (searched recursively) or a CSV with a ``path`` column (relative to
the CSV's folder). Every file is decoded and validated as ingest does; unreadable ones are
skipped and listed with the reason in the report, never fatal. The logged model carries the
preprocessing (normalisation inside; inputs are resized here exactly as training resized them),
the class names and the resolution in its metadata. When the model's run holds an evaluation
with a fitted temperature, ``confidence`` and the top-k probabilities are temperature-scaled;
``raw_confidence`` is the model's own probability (what evaluate's predictions.csv shows).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import atomic
from .backbones import Preprocess
from .errors import PipelineError
from .images import IMAGE_EXTENSIONS, BadImage, load_image
from .stats import rescale


@dataclass
class LoadedModel:
    model: torch.nn.Module
    classes: list[str]
    resolution: int
    temperature: float | None
    uri: str


def list_inputs(source: Path) -> list[Path]:
    source = Path(source)
    if source.is_dir():
        files = sorted(f for f in source.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise PipelineError(f"predict: no images ({', '.join(IMAGE_EXTENSIONS)}) under {source}")
        return files
    if source.suffix.lower() == ".csv" and source.is_file():
        frame = pd.read_csv(source)
        if "path" not in frame.columns:
            raise PipelineError(f"predict: {source} has no `path` column (header found: {', '.join(frame.columns)})")
        return [p if p.is_absolute() else source.parent / p for p in map(Path, frame["path"].astype(str))]
    raise PipelineError(f"predict: {source} is neither a folder of images nor a .csv file with a `path` column")


def load_registered(model_uri: str, tracking_uri: str) -> LoadedModel:
    """The logged classifier, its classes and resolution, and the temperature its run fitted."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        info = mlflow.models.get_model_info(model_uri)
        model = mlflow.pytorch.load_model(model_uri)
    except Exception as exc:  # noqa: BLE001 - unknown alias/version, unreachable server
        raise PipelineError(f"predict: cannot load {model_uri} from {tracking_uri}: {str(exc).splitlines()[0]}. "
                            "List versions and aliases in the MLflow UI (Models tab).") from None
    temperature = None
    if info.run_id:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path="reports/metrics.json")
            temperature = json.loads(Path(path).read_text()).get("calibration", {}).get("temperature")
        except Exception:  # noqa: BLE001 - a model logged without an evaluation: no temperature
            temperature = None
    return LoadedModel(model=model, classes=list(info.metadata["classes"]),
                       resolution=int(info.metadata["resolution"]), temperature=temperature, uri=model_uri)


def predict_files(loaded: LoadedModel, files: list[Path], batch_size: int = 64, top_k: int = 3,
                  min_image_size: int = 8) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions for the readable files (in input order) and the list of skipped ones."""
    preprocess = Preprocess(loaded.resolution)
    rows, skipped = [], []
    k = max(1, min(top_k, len(loaded.classes)))
    names = np.array(loaded.classes)
    with tqdm(total=len(files), desc="predict", unit="img") as bar:
        for start in range(0, len(files), batch_size):
            batch, kept = [], []
            for f in files[start:start + batch_size]:
                try:
                    pixels = load_image(f, min_image_size).pixels
                except BadImage as exc:
                    skipped.append({"path": str(f), "reason": exc.reason, "fix": exc.fix})
                    continue
                except OSError as exc:
                    skipped.append({"path": str(f), "reason": str(exc), "fix": "check the file exists and is readable"})
                    continue
                tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)
                batch.append(preprocess.resize(tensor))
                kept.append(f)
            bar.update(min(batch_size, len(files) - start))
            if not batch:
                continue
            with torch.no_grad():
                raw = loaded.model(torch.stack(batch)).numpy().astype(np.float64)
            proba = rescale(raw, loaded.temperature)
            order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
            for i, f in enumerate(kept):
                row = {"path": str(f), "predicted": names[order[i, 0]], "confidence": round(float(proba[i, order[i, 0]]), 6),
                       "raw_confidence": round(float(raw[i].max()), 6)}
                for j in range(k):
                    row[f"top{j + 1}"] = names[order[i, j]]
                    row[f"top{j + 1}_p"] = round(float(proba[i, order[i, j]]), 6)
                rows.append(row)
    return pd.DataFrame(rows), skipped


def write_predictions(loaded: LoadedModel, files: list[Path], out: Path, batch_size: int = 64,
                      top_k: int = 3) -> dict:
    """Predict ``files`` and write the table (.csv or .parquet, atomically) and a report beside it."""
    started = time.perf_counter()
    frame, skipped = predict_files(loaded, files, batch_size, top_k)
    seconds = time.perf_counter() - started
    out = Path(out)
    if out.suffix == ".parquet":
        atomic.write_parquet(out, frame)
    else:
        with atomic.atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False)
    report = {"model": loaded.uri, "inputs": len(files), "predicted": len(frame), "skipped": skipped,
              "temperature": loaded.temperature, "seconds": round(seconds, 2),
              "images_per_second": round(len(frame) / seconds, 1) if seconds > 0 else None, "output": str(out)}
    atomic.write_json(out.with_name(out.stem + ".report.json"), report)
    return report
