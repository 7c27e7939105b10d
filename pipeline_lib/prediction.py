"""What every modality's predictions share: the loaded model and the output table (the predicted
class, its temperature-scaled confidence, the model's own probability, the top k)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import rescale

MAX_SIDE = 1024  # decode at most this size (data.max_image_side's default): a huge photo costs no gigabyte


@dataclass
class LoadedModel:
    model: object  # what the modality's load_model returns (a torch module, an mlflow pyfunc model)
    classes: list[str]
    resolution: int  # the image side the model resizes to; 0 when it takes no images
    temperature: float | None
    uri: str
    modality: str = "image"


def table(loaded: LoadedModel, raw: np.ndarray, sources: list[str], k: int, column: str = "path") -> list[dict]:
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


def columns(first: str, k: int) -> list[str]:
    return [first, "predicted", "confidence", "raw_confidence"] + [f"top{j + 1}{p}" for j in range(k) for p in ("", "_p")]
