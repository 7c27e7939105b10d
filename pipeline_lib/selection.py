"""Choices made on every labelled image: stratified k-fold cross-validation, scores, the decision.

With few labels a held-out val split is both too small to choose on (2 images per class decide
between models) and a waste (those labels never train the model). When the smallest class has
fewer than ``selection.cv_below`` labelled images, ingest makes no val split; the candidates
(recipes, not fitted models) are scored on out-of-fold predictions over all labelled images, the
winner is refitted on all of them, and only that model meets the test split.

Nothing here looks at test data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import macro_f1_from_labels, nll


@dataclass(frozen=True)
class Fold:
    repeat: int
    fold: int
    train: np.ndarray   # row indices that train
    held: np.ndarray    # row indices scored (disjoint from train)


def effective_folds(y: np.ndarray, folds: int) -> int:
    """``folds``, or fewer when the smallest class with at least two images is smaller (never < 2)."""
    counts = np.bincount(y)
    counts = counts[counts >= 2]
    return int(max(2, min(folds, counts.min()))) if len(counts) else 2


def stratified_folds(y: np.ndarray, folds: int, repeats: int, seed: int) -> list[Fold]:
    """Repeated stratified k-fold: in each repeat every image is held out exactly once, each class
    spread evenly over the folds. A class with a single image cannot be scored without losing it
    from training: it always trains and is never held out. Seeded by ``seed``."""
    y = np.asarray(y)
    k = effective_folds(y, folds)
    out = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        assign = np.full(len(y), -1)
        offset = 0
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            if len(idx) < 2:
                continue
            idx = idx[rng.permutation(len(idx))]
            assign[idx] = (np.arange(len(idx)) + offset) % k  # continue where the last class stopped:
            offset = (offset + len(idx)) % k                  # fold sizes differ by at most one
        for f in range(k):
            out.append(Fold(r, f, np.flatnonzero(assign != f), np.flatnonzero(assign == f)))
    return out


def scores(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    pred = proba.argmax(1)
    return {"accuracy": float((pred == y).mean()), "macro_f1": macro_f1_from_labels(y, pred, n_classes),
            "log_loss": nll(proba, y)}


def summarise(y: np.ndarray, oof: list[np.ndarray], n_classes: int) -> dict:
    """Mean and spread over repeats of the scores of pooled out-of-fold probabilities.

    ``oof``: one (n, C) array per repeat, NaN rows for images never held out."""
    per = []
    for proba in oof:
        ok = ~np.isnan(proba[:, 0])
        per.append(scores(y[ok], proba[ok], n_classes))
    out = {}
    for key in per[0]:
        values = np.array([s[key] for s in per])
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out["n_scored"] = int((~np.isnan(oof[0][:, 0])).sum())
    return out


def best(table: dict[str, dict], metric: str, tie_se: float = 0.0) -> str:
    """The candidate with the best mean ``metric`` — with one exception for the regularisation
    strength: among candidates of the best one's family (same head kind, TTA, backbone and
    self-training; they differ only in C) those within ``tie_se`` standard errors of its score
    count as tied (the standard error of a proportion over the scored items: with 64 labelled
    texts a macro-F1 of 0.80 is known to about ±0.05, a difference of 0.01 means nothing), and
    the lowest log loss among them wins (a proper score that uses every probability, not only the
    argmax); then the first listed, the simpler one. Structural choices (TTA, backbone, kind)
    stay with the metric."""
    names = list(table)
    top = top_scorer(table, metric)
    margin = tie_margin(table[top], metric, tie_se)
    tied = [c for c in names if _family(table[c]) == _family(table[top])
            and table[c][metric] >= table[top][metric] - margin - 1e-12]
    return min(tied, key=lambda c: (round(table[c]["log_loss"], 9), names.index(c)))


def _family(row: dict) -> tuple:
    recipe = row.get("recipe") or {}
    return recipe.get("kind"), recipe.get("self_training"), row.get("tta"), row.get("backbone")


def top_scorer(table: dict[str, dict], metric: str) -> str:
    """The best mean ``metric`` (exact ties: lower log loss, then the first listed)."""
    names = list(table)
    return max(names, key=lambda n: (round(table[n][metric], 9), -round(table[n]["log_loss"], 9), -names.index(n)))


def tie_margin(row: dict, metric: str, tie_se: float) -> float:
    """``tie_se`` standard errors of a proportion ``row[metric]`` over the row's scored items."""
    m, n = row[metric], max(1, row.get("n_scored", 1))
    return tie_se * float(np.sqrt(max(m * (1 - m), 0.0) / n))


def paired_bootstrap(y: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, n_classes: int, metric: str,
                     seed: int, resamples: int = 500) -> dict:
    """Gain of b over a in ``metric`` on the same images, and its standard error from a paired
    bootstrap (the images resampled, both models scored on each resample)."""
    pred_a, pred_b = proba_a.argmax(1), proba_b.argmax(1)

    def score(idx, pred):
        if metric == "accuracy":
            return float((pred[idx] == y[idx]).mean())
        return macro_f1_from_labels(y[idx], pred[idx], n_classes)

    everything = np.arange(len(y))
    gain = score(everything, pred_b) - score(everything, pred_a)
    rng = np.random.default_rng(seed)
    boot = [score(i, pred_b) - score(i, pred_a) for i in rng.integers(0, len(y), size=(resamples, len(y)))]
    return {"gain": float(gain), "se": float(np.std(boot, ddof=1)), "n": int(len(y))}


def oof_matrix(n: int, n_classes: int, repeats: int) -> list[np.ndarray]:
    return [np.full((n, n_classes), np.nan) for _ in range(repeats)]


def mean_oof(oof: list[np.ndarray]) -> np.ndarray:
    """Out-of-fold probabilities averaged over repeats (one row per labelled image; NaN for an
    image never held out)."""
    stacked = np.stack(oof)
    scored = ~np.isnan(stacked[..., 0])
    total = np.where(scored[..., None], stacked, 0.0).sum(0)
    count = scored.sum(0)[:, None]
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
