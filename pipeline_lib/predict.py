"""Batch prediction with a registered model: ``models:/<name>@champion`` by default.

Inputs of an image model: a folder of images (searched recursively) or a CSV with a ``path``
column (relative to the CSV's folder). Every file is decoded and validated as ingest does;
unreadable ones are skipped and listed with the reason in the report, never fatal. Inputs of a
text model: a CSV with a ``text`` column, or a text file with one example per line (an empty
row or line is skipped and listed). The logged model carries the
preprocessing (normalisation inside; inputs are resized here exactly as training resized them),
the class names and the resolution in its metadata. When the model's run holds an evaluation
with a fitted temperature, ``confidence`` and the top-k probabilities are temperature-scaled;
``raw_confidence`` is the model's own probability (what evaluate's predictions.csv shows).
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import atomic
from .errors import PipelineError, TransientError, is_unreachable
from .image.backbones import Preprocess
from .image.files import IMAGE_EXTENSIONS, BadImage, load_image
from .stats import rescale

MAX_SIDE = 1024  # decode at most this size (data.max_image_side's default): a huge photo costs no gigabyte


@dataclass
class LoadedModel:
    model: torch.nn.Module  # an image model; a text model is an mlflow pyfunc model
    classes: list[str]
    resolution: int  # 0 for a text model
    temperature: float | None
    uri: str
    modality: str = "image"


def check_request(source: str | Path, batch_size: int, top_k: int) -> None:
    """What can be checked before the model loads (seconds): the input exists, the sizes are sane."""
    if not Path(source).exists():
        raise PipelineError(f"predict: {source} does not exist: give a folder of images, a CSV with a `path` (images) "
                            "or `text` column, or a text file with one example per line")
    if batch_size < 1 or top_k < 1:
        raise PipelineError(f"predict: --batch-size ({batch_size}) and --top-k ({top_k}) must be at least 1")


def list_inputs(source: Path) -> list[Path]:
    """Every input file: the non-hidden files under a folder (other extensions are kept, to be
    reported as skipped), or the paths of a CSV's ``path`` column (relative to the CSV)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(f for f in source.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(source).parts))
        if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files):
            raise PipelineError(f"predict: no images ({', '.join(IMAGE_EXTENSIONS)}) under {source}")
        return files
    if source.suffix.lower() == ".csv" and source.is_file():
        try:
            frame = pd.read_csv(source, dtype=str, keep_default_na=False)
        except UnicodeDecodeError:
            raise PipelineError(f"predict: {source} is not UTF-8 text (UTF-16 from Excel?): save it as "
                                "\"CSV UTF-8\" and try again") from None
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            raise PipelineError(f"predict: {source} is not a readable CSV ({str(exc).splitlines()[0]}): "
                                "give a header line `path` and one image path per line") from None
        if "path" not in frame.columns:
            raise PipelineError(f"predict: {source} has no `path` column (header found: {', '.join(frame.columns)})")
        if frame.empty:
            raise PipelineError(f"predict: {source} has a header but no rows: add one image path per line")
        return [p if p.is_absolute() else source.parent / p for p in map(Path, frame["path"].astype(str))]
    raise PipelineError(f"predict: {source} is neither a folder of images nor a .csv file with a `path` column")


def list_texts(source: Path) -> list[tuple[str, str]]:
    """(where, text) of every input of a text model: the rows of a CSV's ``text`` column, or the
    lines of a text file (UTF-8), blank ones included (they are reported as skipped)."""
    from .text.files import decode_utf8

    source = Path(source)
    if not source.is_file():
        raise PipelineError(f"predict: {source} is not a file: give a CSV with a `text` column or a text file "
                            "with one example per line")
    content = decode_utf8(source.read_bytes(), f"predict: {source}")
    if source.suffix.lower() == ".csv":
        import io

        try:
            frame = pd.read_csv(io.StringIO(content), dtype=str, keep_default_na=False)
        except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
            raise PipelineError(f"predict: {source} is not a readable CSV ({str(exc).splitlines()[0]}): "
                                "give a header line `text` and one example per row") from None
        if "text" not in frame.columns:
            raise PipelineError(f"predict: {source} has no `text` column (header found: {', '.join(frame.columns)})")
        return [(f"{source}:{i + 2}", t) for i, t in enumerate(frame["text"])]
    return [(f"{source}:{i + 1}", line) for i, line in enumerate(content.splitlines())]


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
            text = (info.metadata or {}).get("modality") == "text"
            model = (mlflow.pyfunc if text else mlflow.pytorch).load_model(model_uri, dst_path=scratch)
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
                       resolution=0 if text else int(info.metadata["resolution"]), temperature=temperature,
                       uri=model_uri, modality="text" if text else "image")


def _table(loaded: LoadedModel, raw: np.ndarray, sources: list[str], k: int, column: str = "path") -> list[dict]:
    """Output rows: the predicted class, its (temperature-scaled) confidence, the model's own
    probability and the top k."""
    proba = rescale(raw, loaded.temperature)
    names = np.array(loaded.classes)
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    rows = []
    for i, source in enumerate(sources):
        row = {column: source, "predicted": names[order[i, 0]], "confidence": round(float(proba[i, order[i, 0]]), 6),
               "raw_confidence": round(float(raw[i].max()), 6)}
        for j in range(k):
            row[f"top{j + 1}"] = names[order[i, j]]
            row[f"top{j + 1}_p"] = round(float(proba[i, order[i, j]]), 6)
        rows.append(row)
    return rows


def _columns(first: str, k: int) -> list[str]:
    return [first, "predicted", "confidence", "raw_confidence"] + [f"top{j + 1}{p}" for j in range(k) for p in ("", "_p")]


def predict_texts(loaded: LoadedModel, items: list[tuple[str, str]], batch_size: int = 64, top_k: int = 3
                  ) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions of a text model for the non-empty texts (in input order; the model normalises
    them as ingest did), and the list of skipped (empty) ones."""
    from .text.text_normalize import normalize_text

    k = max(1, min(top_k, len(loaded.classes)))
    empty = [not normalize_text(text) for _, text in items]
    kept = [item for item, blank in zip(items, empty) if not blank]
    skipped = [{"path": where, "reason": "empty text", "fix": "write the example in the row (or remove it)"}
               for (where, _), blank in zip(items, empty) if blank]
    rows = []
    for start in tqdm(range(0, len(kept), batch_size), desc="predict", unit="batch", disable=len(kept) < batch_size):
        part = kept[start:start + batch_size]
        out = loaded.model.predict(pd.DataFrame({"text": [t for _, t in part]}))
        rows += _table(loaded, out[loaded.classes].to_numpy(np.float64), [w for w, _ in part], k, "source")
        for row, (_, text) in zip(rows[-len(part):], part):
            row["text"] = text[:200]
    return pd.DataFrame(rows, columns=_columns("source", k) + ["text"]), skipped


def predict_files(loaded: LoadedModel, files: list[Path], batch_size: int = 64, top_k: int = 3,
                  min_image_size: int = 8) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions for the readable files (in input order) and the list of skipped ones."""
    if batch_size < 1 or top_k < 1:
        raise PipelineError(f"predict: --batch-size ({batch_size}) and --top-k ({top_k}) must be at least 1")
    preprocess = Preprocess(loaded.resolution)
    rows, skipped = [], []
    k = max(1, min(top_k, len(loaded.classes)))
    with tqdm(total=len(files), desc="predict", unit="img") as bar:
        for start in range(0, len(files), batch_size):
            batch, kept = [], []
            for f in files[start:start + batch_size]:
                if f.suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.append({"path": str(f), "reason": f"not an image file type ({f.suffix or 'no extension'})",
                                    "fix": f"give images of type {', '.join(IMAGE_EXTENSIONS)}"})
                    continue
                try:
                    pixels = load_image(f, min_image_size, max_side=MAX_SIDE).pixels
                except BadImage as exc:  # the fix without ingest's params (they do not apply here)
                    skipped.append({"path": str(f), "reason": exc.reason,
                                    "fix": re.sub(r",? or (lower|set) data\.\S+.*$", "", exc.fix)})
                    continue
                except OSError as exc:
                    skipped.append({"path": str(f), "reason": str(exc), "fix": "check the file exists and is readable"})
                    continue
                tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float().div_(255.0)  # a writable copy
                batch.append(preprocess.resize(tensor))
                kept.append(f)
            bar.update(min(batch_size, len(files) - start))
            if not batch:
                continue
            with torch.no_grad():
                raw = loaded.model(torch.stack(batch)).numpy().astype(np.float64)
            rows += _table(loaded, raw, [str(f) for f in kept], k)
    return pd.DataFrame(rows, columns=_columns("path", k)), skipped


def read_inputs(loaded: LoadedModel, source: Path) -> list:
    """What ``source`` holds for this model: image files, or (where, text) pairs for a text model."""
    return list_texts(source) if loaded.modality == "text" else list_inputs(source)


def write_predictions(loaded: LoadedModel, files: list, out: Path, batch_size: int = 64,
                      top_k: int = 3) -> dict:
    """Predict ``files`` (images, or a text model's (where, text) pairs) and write the table (.csv or
    .parquet, atomically) and a report beside it."""
    started = time.perf_counter()
    predict = predict_texts if loaded.modality == "text" else predict_files
    frame, skipped = predict(loaded, files, batch_size, top_k)
    seconds = time.perf_counter() - started
    out = Path(out)
    if out.suffix == ".parquet":
        atomic.write_parquet(out, frame)
    else:
        with atomic.atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False)
    report = {"model": loaded.uri, "inputs": len(files), "predicted": len(frame), "skipped": skipped,
              "temperature": loaded.temperature, "seconds": round(seconds, 2),
              f"{'texts' if loaded.modality == 'text' else 'images'}_per_second":
                  round(len(frame) / seconds, 1) if seconds > 0 else None, "output": str(out)}
    report_file = out.with_name(out.stem + ".report.json")
    atomic.write_json(report_file, report)
    if files and frame.empty:
        first = skipped[0]
        raise PipelineError(f"predict: none of the {len(files)} input(s) could be read (first: {first['path']}: "
                            f"{first['reason']}); every one is listed in {report_file}")
    return report
