"""Stage evaluate: test accuracy, macro-F1, per-class precision/recall, confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from . import atomic
from .config import Params, Paths
from .featurize import load_features
from .heads import load_head, predict_proba
from .ingest import load_manifest
from .plots import plot_confusion
from .stats import bootstrap_ci


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n_test": int(len(y_true)),
        "per_class": {cls: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for cls, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }


def top_confusions(cm: np.ndarray, classes: list[str], k: int) -> list[dict]:
    off = [(int(cm[i, j]), classes[i], classes[j]) for i in range(len(classes)) for j in range(len(classes))
           if i != j and cm[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"actual": a, "predicted": p, "count": n} for n, a, p in off[:k]]


def run(params: Params, paths: Paths) -> dict:
    _, classes = load_manifest(paths)
    X, y, image_ids = load_features(paths, "test")
    head, _ = load_head(paths.head, paths.head_meta)
    proba = predict_proba(head, X)
    pred = proba.argmax(1)
    metrics = classification_metrics(y, pred, classes)
    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    metrics["top_confusions"] = top_confusions(cm, classes, params.evaluate.top_confusions)
    if params.evaluate.bootstrap:
        metrics["ci"] = {"level": params.evaluate.ci_level, "resamples": params.evaluate.bootstrap,
                         **bootstrap_ci(y, pred, len(classes), params.evaluate.bootstrap,
                                        params.evaluate.ci_level, params.seed)}

    atomic.write_json(paths.metrics, metrics)
    names = np.array(classes)
    with atomic.atomic_path(paths.predictions) as tmp:
        pd.DataFrame({"image_id": image_ids, "actual": names[y], "predicted": names[pred],
                      "confidence": proba.max(1).round(6)}).to_csv(tmp, index=False)
    with atomic.atomic_path(paths.per_class_csv) as tmp:
        pd.DataFrame(metrics["per_class"]).T.rename_axis("class").reset_index().to_csv(tmp, index=False)
    plot_confusion(cm, classes, paths.confusion_png,
                   title=f"test accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.3f}")
    return metrics
