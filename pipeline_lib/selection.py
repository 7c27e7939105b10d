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


def undecidable(y: np.ndarray) -> str | None:
    """Why nothing can be chosen by cross-validation on labels ``y``, or None when it can: an item
    is held out only when its class keeps another labelled item to train on, so with a single
    labelled item in every class no fold scores anything."""
    counts = np.bincount(np.asarray(y, dtype=int)) if len(y) else np.zeros(0, int)
    if (counts >= 2).any():
        return None
    return (f"too few labels to decide: {int(len(y))} labelled item(s), no class with 2, so no item can be held out "
            "and scored; nothing is chosen or kept on evidence (label at least 2 items per class, better 5)")


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
    """The candidate with the best mean ``metric``, as a grid search picks it. Exact ties, and with
    ``tie_se`` > 0 the candidates of the best one's family (same head kind, TTA, backbone and
    self-training: they differ only in C) within ``tie_se`` standard errors of its score, are
    broken by the family's CV curve smoothed over neighbouring C values (a C whose neighbours also
    score well is less likely a lucky draw), then by the first listed. The tie-breaker favours no
    end of the C grid: log loss did (strong L2 on normalised embeddings has a high log loss
    whatever its ranking, so it always handed ties to the weakest regularisation)."""
    names = list(table)
    top = top_scorer(table, metric)
    margin = tie_margin(table[top], metric, tie_se)
    family = [c for c in names if _family(table[c]) == _family(table[top])]
    tied = [c for c in family if table[c][metric] >= table[top][metric] - margin - 1e-12]
    smooth = _smoothed(table, family, metric)
    return max(tied, key=lambda c: (round(smooth[c], 9), -names.index(c)))


def _smoothed(table: dict[str, dict], family: list[str], metric: str) -> dict[str, float]:
    """Each candidate's ``metric`` averaged with its neighbours' in the family ordered by C."""
    order = sorted(family, key=lambda c: ((table[c].get("recipe") or {}).get("C") or 0.0, family.index(c)))
    values = np.array([table[c][metric] for c in order])
    return {c: float(values[max(0, i - 1):i + 2].mean()) for i, c in enumerate(order)}


def _family(row: dict) -> tuple:
    recipe = row.get("recipe") or {}
    return recipe.get("kind"), recipe.get("self_training"), row.get("tta"), row.get("backbone")


def top_scorer(table: dict[str, dict], metric: str) -> str:
    """The best mean ``metric`` (exact ties: the first listed)."""
    names = list(table)
    return max(names, key=lambda n: (round(table[n][metric], 9), -names.index(n)))


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


# ---- decisions on few labels: bias-corrected estimates and a calibrated keep rule --------------

def weighted_scores(y: np.ndarray, pred: np.ndarray, weights: np.ndarray, n_classes: int, metric: str) -> np.ndarray:
    """``metric`` of predictions ``pred`` (n,) under each row of item weights ``weights`` (B, n):
    a bootstrap resample is a weight vector of counts, its out-of-bag set one of 0/1."""
    if metric == "accuracy":
        return (weights @ (pred == y)) / np.maximum(weights.sum(1), 1e-12)
    onehot_y, onehot_p = np.eye(n_classes)[y], np.eye(n_classes)[pred]
    tp = weights @ (onehot_y * onehot_p)
    denom = weights @ onehot_y + weights @ onehot_p  # 2TP + FP + FN per class
    seen = denom > 0
    f1 = np.where(seen, 2 * tp / np.maximum(denom, 1e-12), 0.0)
    return f1.sum(1) / np.maximum(seen.sum(1), 1)


def bias_corrected(y: np.ndarray, proba: np.ndarray, n_classes: int, metric: str, seed: int, chosen: int,
                   baseline: int | None = None, resamples: int = 1000) -> dict:
    """What the selection among candidates really gains, not what the winner's score says.

    ``proba`` (K, n, C): every candidate's out-of-fold probabilities on the same n items; ``chosen``
    the one the rule picked on all n (the maximum of K noisy scores: biased upward). BBC-CV
    (Tsamardinos, Greasidou & Borboudakis 2018): resample the items, let the selection pick on the
    in-bag items, score its pick on the out-of-bag ones; the mean over resamples estimates the
    procedure's score without the optimism of the maximum, and needs no extra training. Ties go to
    the lowest index (list the baseline first: a tie keeps it).

    Returns ``score`` (naive: the chosen one's score on all items), ``score_corrected`` and
    ``optimism``; with ``baseline``, ``gain`` (corrected: the pick's out-of-bag score minus the
    baseline's on the same items), ``gain_naive``, ``se`` (paired bootstrap of the chosen
    candidate's gain over the baseline) and ``n``."""
    y = np.asarray(y)
    preds = np.asarray(proba).argmax(-1)
    n = len(y)
    rng = np.random.default_rng([seed, 22])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
    out_of_bag = (counts == 0).astype(float)
    inbag = np.stack([weighted_scores(y, p, counts, n_classes, metric) for p in preds])      # (K, B)
    oob = np.stack([weighted_scores(y, p, out_of_bag, n_classes, metric) for p in preds])    # (K, B)
    picked = inbag.argmax(0)
    columns = np.arange(resamples)
    whole = np.stack([weighted_scores(y, p, np.ones((1, n)), n_classes, metric)[0] for p in preds])
    out = {"score": float(whole[chosen]), "score_corrected": float(oob[picked, columns].mean()),
           "n": int(n), "candidates": int(len(preds))}
    out["optimism"] = out["score"] - out["score_corrected"]
    if baseline is not None:
        out["gain_naive"] = float(whole[chosen] - whole[baseline])
        out["gain"] = float((oob[picked, columns] - oob[baseline]).mean())
        out["se"] = float(np.std(inbag[chosen] - inbag[baseline], ddof=1))
        out["optimism"] = out["gain_naive"] - out["gain"]
    return out


def keep_threshold(level: float) -> float:
    """How many standard errors a bias-corrected gain must exceed: the one-sided normal quantile
    at ``level`` (the share of truly useless changes the rule may keep)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - level)


def keep(gain: float, se: float, level: float) -> bool:
    """Keep a change (fine-tuning, a tuned encoder) when its bias-corrected gain is positive and
    significant at the one-sided ``level``; a gain of exactly 0 (the change did nothing) never."""
    return bool(gain > 0 and gain > keep_threshold(level) * se)
