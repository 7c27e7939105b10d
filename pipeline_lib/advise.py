"""Advice on the user's own data, from the cached features (seconds): what more labels would buy
(a learning curve fitted with an inverse power law and extrapolated), which unlabelled items to
label next (typical items first while labels are very few, uncertain and diverse ones after), which
given labels look wrong (out-of-fold probabilities, confident-learning style; near-duplicates with
different labels). The stage (pipeline_lib.stages.advise) reads the data and writes the report.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .features import similar_pairs, unit_rows
from .heads import fit_head, predict_proba
from .selection import stratified_folds
from .stats import macro_f1_from_labels


def score(y: np.ndarray, pred: np.ndarray, n_classes: int, metric: str) -> float:
    return float((pred == y).mean()) if metric == "accuracy" else macro_f1_from_labels(y, pred, n_classes)


def _subsample(rows: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``fraction`` of each class's rows (at least one), drawn with ``rng``."""
    keep = []
    for c in np.unique(y[rows]):
        members = rows[y[rows] == c]
        keep.append(rng.choice(members, max(1, int(round(fraction * len(members)))), replace=False))
    return np.sort(np.concatenate(keep))


@dataclass
class Curve:
    sizes: np.ndarray  # labelled items trained on, one per (repeat, fraction)
    scores: np.ndarray  # pooled out-of-fold score at that size
    fractions: np.ndarray
    oof: np.ndarray  # (n, C) out-of-fold probabilities at fraction 1, averaged over repeats (NaN: never held out)


def learning_curve(X: np.ndarray, y: np.ndarray, n_classes: int, fit, fractions: list[float], repeats: int,
                   folds: int, seed: int, metric: str) -> Curve:
    """For each repeat: a stratified k-fold split of every labelled item; for each fraction, each
    fold's training part subsampled per class to that fraction, ``fit(X, y, seed)`` -> head, scored
    on the fold's held-out part (pooled over folds)."""
    sizes, scores, fracs = [], [], []
    oof_sum, oof_n = np.zeros((len(y), n_classes)), np.zeros(len(y))
    for r in range(repeats):
        split = stratified_folds(y, folds, 1, seed + 1000 * r)
        rng = np.random.default_rng([seed, r])
        for f in sorted(fractions):
            pred, used = np.full(len(y), -1), []
            for fold in split:
                rows = _subsample(fold.train, y, f, rng)
                proba = predict_proba(fit(X[rows], y[rows], seed + r), X[fold.held])
                pred[fold.held] = proba.argmax(1)
                used.append(len(rows))
                if f == max(fractions):
                    oof_sum[fold.held] += proba
                    oof_n[fold.held] += 1
            held = pred >= 0
            sizes.append(float(np.mean(used)))
            scores.append(score(y[held], pred[held], n_classes, metric))
            fracs.append(f)
    with np.errstate(invalid="ignore"):
        oof = oof_sum / oof_n[:, None]
    oof[oof_n == 0] = np.nan
    return Curve(np.array(sizes), np.array(scores), np.array(fracs), oof)


def power_law(n, a, b, c):
    """Inverse power law: the score approaches ``a`` as n grows, ``b n^-c`` below it."""
    return a - b * np.power(n, -c)


def fit_power_law(sizes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(a, b, c) by least squares, a ≤ 1 (a score), b ≥ 0, 0.05 ≤ c ≤ 2."""
    from scipy.optimize import curve_fit

    sizes, scores = np.asarray(sizes, float), np.asarray(scores, float)
    p0 = (min(1.0, scores.max() + 0.05), max(0.1, (scores.max() - scores.min()) * sizes.min() ** 0.5 + 0.1), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            params, _ = curve_fit(power_law, sizes, scores, p0=p0, bounds=([0.0, 0.0, 0.05], [1.0, 100.0, 2.0]),
                                  maxfev=20000)
        except (RuntimeError, ValueError):  # flat or too few points: a constant curve
            params = np.array([float(np.mean(scores)), 0.0, 0.5])
    return params


def extrapolate(sizes: np.ndarray, scores: np.ndarray, at: list[float], seed: int, resamples: int = 200,
                level: float = 0.8) -> dict:
    """The fitted curve at ``at`` (labelled-item counts) with a ``level`` interval from a residual
    bootstrap (the fit's residuals resampled, the curve refitted)."""
    params = fit_power_law(sizes, scores)
    fitted = power_law(sizes, *params)
    residuals = scores - fitted
    rng = np.random.default_rng(seed)
    at = np.asarray(at, float)
    draws = np.array([power_law(at, *fit_power_law(sizes, fitted + rng.choice(residuals, len(residuals))))
                      for _ in range(resamples)])
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return {"params": {"a": float(params[0]), "b": float(params[1]), "c": float(params[2])},
            "at": at.tolist(), "predicted": power_law(at, *params).clip(0, 1).tolist(),
            "low": lo.clip(0, 1).tolist(), "high": hi.clip(0, 1).tolist(), "level": level,
            "rmse": float(np.sqrt(np.mean(residuals ** 2)))}


# ---- what to label next ---------------------------------------------------------------------

def typical(X_labelled: np.ndarray, X_pool: np.ndarray, n: int, seed: int, neighbours: int = 20) -> np.ndarray:
    """TypiClust (Hacohen et al., 2022): k-means of labelled + pool into (labelled + n) clusters;
    from the largest clusters that hold no labelled item, the most typical pool item (the highest
    inverse mean distance to its nearest neighbours in the cluster). Indices into the pool."""
    from sklearn.cluster import KMeans

    n = min(n, len(X_pool))
    Z = unit_rows(np.concatenate([X_labelled, X_pool]))
    k = min(len(Z), len(X_labelled) + n)
    labels = KMeans(k, n_init=3, random_state=seed).fit_predict(Z)
    covered = set(labels[:len(X_labelled)])
    pool_labels = labels[len(X_labelled):]
    order = sorted(set(pool_labels), key=lambda c: (c in covered, -int((pool_labels == c).sum()), c))
    chosen = []
    for c in order:
        members = np.flatnonzero(pool_labels == c)
        chosen.append(members[int(np.argmax(typicality(X_pool[members], neighbours, seed=seed)))])
        if len(chosen) == n:
            break
    if len(chosen) < n:  # fewer uncovered clusters than n: fill with the pool's most typical items
        rest = np.setdiff1d(np.arange(len(X_pool)), chosen)
        chosen += list(rest[np.argsort(typicality(X_pool, neighbours, seed=seed)[rest], kind="stable")[::-1][:n - len(chosen)]])
    return np.array(chosen, dtype=int)


def typicality(X: np.ndarray, neighbours: int = 20, chunk: int = 512, reference: int = 5000, seed: int = 0
               ) -> np.ndarray:
    """Each item's inverse mean distance to its nearest neighbours (TypiClust's measure), a block
    of rows at a time (no n x n matrix). Beyond ``reference`` items the neighbours are looked for
    among a seeded sample of that many: time and memory grow linearly with a large pool."""
    Z = unit_rows(X)
    sampled = len(Z) > reference
    ref = np.sort(np.random.default_rng(seed).choice(len(Z), reference, replace=False)) if sampled else np.arange(len(Z))
    in_ref = np.zeros(len(Z), dtype=bool)
    in_ref[ref] = True
    m = min(neighbours, len(ref) - 1)
    if m < 1:
        return np.ones(len(Z))
    out = np.empty(len(Z))
    for start in range(0, len(Z), chunk):
        d = np.sort(np.sqrt(np.clip(2 - 2 * Z[start:start + chunk] @ Z[ref].T, 0, None)), axis=1)[:, :m + 1]
        own = in_ref[start:start + chunk, None]  # an item of the sample is its own nearest: skip it
        out[start:start + chunk] = 1.0 / (np.where(own, d[:, 1:], d[:, :m]).mean(1) + 1e-12)
    return out


def uncertain_diverse(X_pool: np.ndarray, proba: np.ndarray, n: int, seed: int, oversample: int = 10) -> np.ndarray:
    """Margin sampling with diversity: the ``oversample * n`` pool items with the smallest margin
    between their two likeliest classes, clustered into n groups by k-means; the smallest-margin
    item of each group. Indices into the pool, most uncertain first."""
    from sklearn.cluster import KMeans

    n = min(n, len(X_pool))
    margin = margins(proba)
    candidates = np.argsort(margin, kind="stable")[:min(len(X_pool), oversample * n)]
    labels = KMeans(n, n_init=3, random_state=seed).fit_predict(unit_rows(X_pool[candidates]))
    chosen = [candidates[labels == c][np.argmin(margin[candidates[labels == c]])] for c in range(n)
              if (labels == c).any()]
    return np.array(sorted(chosen, key=lambda i: margin[i]), dtype=int)


def margins(proba: np.ndarray) -> np.ndarray:
    top2 = np.sort(proba, axis=1)[:, -2:] if proba.shape[1] > 1 else np.c_[np.zeros(len(proba)), proba]
    return top2[:, 1] - top2[:, 0]


def suggest(strategy: str, X_labelled: np.ndarray, X_pool: np.ndarray, proba: np.ndarray, n: int,
            seed: int) -> np.ndarray:
    if strategy == "typical":
        return typical(X_labelled, X_pool, n, seed)
    if strategy == "margin":
        return uncertain_diverse(X_pool, proba, n, seed)
    return np.random.default_rng(seed).choice(len(X_pool), min(n, len(X_pool)), replace=False)


# ---- labels that look wrong -----------------------------------------------------------------

def suspect_labels(y: np.ndarray, oof: np.ndarray) -> dict[str, np.ndarray]:
    """Confident-learning style (Northcutt et al., 2021, without its AGPL package): class j's
    threshold t_j is the mean out-of-fold probability of class j over the items labelled j. An item
    is flagged when another class reaches its threshold and its own label's probability is below
    its class's; every item is ranked by the suggested class's probability minus the given one's
    (most suspicious first). Items never held out (NaN rows) are not ranked."""
    ok = ~np.isnan(oof[:, 0])
    n_classes = oof.shape[1]
    thresholds = np.array([oof[ok & (y == c), c].mean() if (ok & (y == c)).any() else 1.0 for c in range(n_classes)])
    rows = np.flatnonzero(ok)
    p = oof[rows]
    given = p[np.arange(len(rows)), y[rows]]
    other = p.copy()
    other[np.arange(len(rows)), y[rows]] = -1
    suggested = other.argmax(1)
    p_suggested = other.max(1)
    flagged = (p_suggested >= thresholds[suggested]) & (given < thresholds[y[rows]])
    order = np.argsort(-(p_suggested - given), kind="stable")
    return {"index": rows[order], "suggested": suggested[order], "p_given": given[order],
            "p_suggested": p_suggested[order], "flagged": flagged[order], "thresholds": thresholds}


def estimated_wrong_labels(y: np.ndarray, oof: np.ndarray, seed: int, resamples: int = 100) -> dict:
    """How many labels are likely wrong, not just hard: a label-noise model fitted to the
    out-of-fold probabilities. A given label is the model's class distribution, sharpened or
    flattened by a temperature T, with probability 1 - e, and a class drawn uniformly with
    probability e: p(label) = (1 - e) softmax(log p / T) + e / K. T absorbs the model's
    miscalibration (hard items), e what no temperature explains (labels that contradict a
    confident model). Fitted by maximum likelihood; the expected number of wrong labels is
    e (K - 1) / K n, with a 90 % interval from refitting on resampled items."""
    from scipy.optimize import minimize

    from .stats import softmax

    flagged = int(suspect_labels(y, oof)["flagged"].sum())
    ok = ~np.isnan(oof[:, 0])
    n, k = int(ok.sum()), oof.shape[1]
    if n < 10 or k < 2:
        return {"flagged": flagged, "estimate": None, "interval": None, "noise_rate": None}
    logp = np.log(np.clip(oof[ok] / oof[ok].sum(1, keepdims=True), 1e-12, None))
    labels = np.asarray(y)[ok]

    def fit(rows: np.ndarray) -> float:
        def loss(theta):
            soft = softmax(logp[rows], np.exp(theta[0]))
            e = 1.0 / (1.0 + np.exp(-theta[1]))
            return -np.mean(np.log((1 - e) * soft[np.arange(len(rows)), labels[rows]] + e / k))

        best = min((minimize(loss, [0.0, start], method="L-BFGS-B", bounds=[(-3, 3), (-12, 6)])
                    for start in (-4.0, -1.0)), key=lambda r: r.fun)
        return float(1.0 / (1.0 + np.exp(-best.x[1])))

    rate = fit(np.arange(n))
    rng = np.random.default_rng([seed, 24])
    draws = [fit(rng.integers(0, n, n)) for _ in range(resamples)]
    wrong = (k - 1) / k * n
    low, high = np.percentile(draws, [5, 95]) * wrong
    return {"flagged": flagged, "estimate": round(rate * wrong, 1), "interval": [round(float(low), 1), round(float(high), 1)],
            "noise_rate": round(rate, 4)}


def conflicting_duplicates(X: np.ndarray, y: np.ndarray, threshold: float, chunk: int = 1024) -> list[tuple[int, int, float]]:
    """Pairs of labelled items whose features' cosine similarity exceeds ``threshold`` while their
    labels differ, most similar first."""
    n = len(X)
    return similar_pairs(X, X, threshold, lambda rows, _: (rows[:, None] < np.arange(n)[None, :])
                         & (y[rows][:, None] != y[None, :]), chunk)


def head_fitter(recipe, train_head_params, n_classes: int):
    """fit(X, y, seed) -> the deployed recipe's head: what the curve and the OOF probabilities use."""
    return lambda X, y, seed: fit_head(X, y, n_classes, recipe, train_head_params, seed).head
