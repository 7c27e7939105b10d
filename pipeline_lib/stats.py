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


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over equal-width bins."""
    conf = proba.max(1)
    correct = proba.argmax(1) == y_true
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def reliability_bins(proba: np.ndarray, y_true: np.ndarray, n_bins: int = 15):
    """Per bin: mean confidence, accuracy and count (empty bins left out)."""
    conf = proba.max(1)
    correct = proba.argmax(1) == y_true
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    rows = [(conf[bins == b].mean(), correct[bins == b].mean(), int((bins == b).sum()))
            for b in range(n_bins) if (bins == b).any()]
    return np.array(rows).reshape(-1, 3)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature scaling: the T > 0 that minimises the NLL of softmax(logits / T) (fit on val)."""
    import torch
    from torch.nn import functional as F

    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(y_true, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_proba(proba: np.ndarray) -> np.ndarray:
    """Log-probabilities, which serve as logits: softmax(log p / T) is temperature scaling."""
    return np.log(np.clip(proba, 1e-12, None))


def fit_temperature_on_proba(proba: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature fitted to probabilities (1 when there is nothing to fit on)."""
    return fit_temperature(log_proba(proba), y_true) if len(y_true) else 1.0


def rescale(proba: np.ndarray, temperature: float | None) -> np.ndarray:
    """Probabilities scaled by a temperature (unchanged for None or 1)."""
    return proba if not temperature or temperature == 1.0 else softmax(log_proba(proba), temperature)


def nll(proba: np.ndarray, y_true: np.ndarray) -> float:
    return float(-np.log(np.clip(proba[np.arange(len(y_true)), y_true], 1e-12, None)).mean())


def mcnemar(correct_first: np.ndarray, correct_second: np.ndarray, alternative: str = "two-sided") -> dict:
    """McNemar's exact test on the same items: only the discordant ones count (the items one model
    alone gets right). ``alternative="greater"``: is the second model right more often than the
    first, p = P(Binomial(b + c, 1/2) >= c) with c the second's lone wins; p = 1 when no item is
    discordant."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_first, bool), np.asarray(correct_second, bool)
    only_first, only_second = int((a & ~b).sum()), int((~a & b).sum())
    n = only_first + only_second
    p = binomtest(only_second, n, 0.5, alternative=alternative).pvalue if n else 1.0
    return {"n": int(len(a)), "only_first_correct": only_first, "only_second_correct": only_second,
            "p_value": float(p)}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class scores. Macro-F1 averages the classes that have test images;
    a class without any (data.zero_shot_classes) is listed as unmeasured, its support 0."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    measured = [i for i in labels if support[i] > 0]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=measured, average="macro", zero_division=0)),
        "n_test": int(len(y_true)),
        "unmeasured_classes": [classes[i] for i in labels if support[i] == 0],
        "per_class": {cls: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for cls, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }
