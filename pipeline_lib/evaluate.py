"""Stage evaluate: test accuracy, macro-F1, per-class precision/recall, confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from . import atomic
from .config import Params, Paths
from .featurize import load_features
from .heads import head_logits, load_head, predict_proba
from .ingest import load_manifest
from .plots import plot_confusion, plot_reliability
from .stats import (bootstrap_ci, expected_calibration_error, fit_temperature, nll, reliability_bins,
                    softmax)


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


def calibrate(head, paths: Paths, X_test: np.ndarray, y_test: np.ndarray) -> dict:
    """ECE on test before and after temperature scaling fitted on val; reliability diagram PNG."""
    logits_test = head_logits(head, X_test)
    raw = softmax(logits_test)
    X_val, y_val, _ = load_features(paths, "val")
    temperature = fit_temperature(head_logits(head, X_val), y_val) if len(X_val) else 1.0
    scaled = softmax(logits_test, temperature)
    result = {"temperature": temperature, "ece": expected_calibration_error(raw, y_test),
              "ece_temperature_scaled": expected_calibration_error(scaled, y_test),
              "nll": nll(raw, y_test), "nll_temperature_scaled": nll(scaled, y_test)}
    plot_reliability({f"as trained (ECE {result['ece']:.3f})": reliability_bins(raw, y_test),
                      f"T={temperature:.2f} (ECE {result['ece_temperature_scaled']:.3f})":
                          reliability_bins(scaled, y_test)},
                     paths.reliability_png, title="reliability on test; temperature fitted on val")
    return result


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

    metrics["calibration"] = calibrate(head, paths, X, y)

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
