"""Uncertainty and calibration of a classifier's test results: with few test images a single
accuracy number lies, so metrics come with bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np


def macro_f1_from_labels(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    cm = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    denom = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN per class
    seen = denom > 0  # classes that occur as a label or a prediction (sklearn's default labels)
    return float((2 * np.diag(cm)[seen] / denom[seen]).mean()) if seen.any() else 0.0


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap intervals for accuracy and macro-F1 (test images resampled)."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    idx = rng.integers(0, n, size=(n_boot, n))
    correct = (y_true == y_pred)
    acc = correct[idx].mean(axis=1)
    f1 = np.array([macro_f1_from_labels(y_true[i], y_pred[i], n_classes) for i in idx])
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {"accuracy": [float(np.percentile(acc, lo)), float(np.percentile(acc, hi))],
            "macro_f1": [float(np.percentile(f1, lo)), float(np.percentile(f1, hi))]}
