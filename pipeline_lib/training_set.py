"""The labelled images' cached features as a training set for heads: folds, what joins a training
fold (augmented copies of its own images, synthetic images), and one head recipe fitted on it
(with self-training on the unlabelled images). Used by train_head's selection and by finetune's
per-fold probes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import Params
from .dataset import AUGMENTED, SYNTHETIC, UNLABELED, derived_from_labels, load_augmented, load_synthetic
from .features import featurized_backbones, load_features, load_flipped
from .heads import Head, HeadRecipe, fit_head, predict_proba
from .paths import Paths
from .selection import Fold, stratified_folds

TTA = " + flip TTA"


class TrainingSet:
    """The labelled images' features plus what may join a training fold: the offline augmented
    copies of the fold's own training images (never of a held-out one) and the synthetic images."""

    def __init__(self, params: Params, paths: Paths, backbone: str | None = None):
        X, y, ids = load_features(paths, "train", backbone)
        Xv, yv, _ = load_features(paths, "val", backbone)
        flip, flip_v = load_flipped(paths, "train", backbone), load_flipped(paths, "val", backbone)
        self.n_train = len(X)
        self.X, self.y = np.concatenate([X, Xv]), np.concatenate([y, yv])
        self.X_flip = np.concatenate([flip, flip_v]) if flip is not None else None
        self.ids = ids
        self.aug = (np.zeros((0, X.shape[1]), np.float32), np.zeros(0, np.int64), np.zeros(0, int))
        if params.train_head.use_augmented:
            Xa, ya, aug_ids = load_features(paths, AUGMENTED, backbone)
            frame = load_augmented(paths).drop_duplicates("item_id").set_index("item_id")
            source = frame.loc[list(aug_ids), "source"].str.slice(len("augment:")).str.split("#").str[0]
            row_of = {iid: i for i, iid in enumerate(ids)}
            self.aug = (Xa, ya, np.array([row_of.get(s, -1) for s in source], dtype=int))
        self.X_syn, self.y_syn, syn_ids = load_features(paths, SYNTHETIC, backbone)
        frame = load_synthetic(paths).drop_duplicates("item_id").set_index("item_id")
        derived = pd.Series(derived_from_labels(frame, params), index=frame.index)
        self.syn_derived = np.array([bool(derived.get(i, False)) for i in syn_ids], dtype=bool)
        self.backbone = backbone or featurized_backbones(paths)[0]
        self.U = self.U_truth = None  # unlabelled images' features (and hidden labels, -1 when unknown)
        if params.semi_supervised.source != "none":
            self.U, self.U_truth, _ = load_features(paths, UNLABELED, backbone)
        self.syn_weight = params.synthetic.loss_weight

    @property
    def mode(self) -> str:
        return "holdout" if len(self.X) > self.n_train else "cv"

    def folds(self, params: Params) -> list[Fold]:
        if self.mode == "holdout":
            return [Fold(0, 0, np.arange(self.n_train), np.arange(self.n_train, len(self.X)))]
        s = params.selection
        return stratified_folds(self.y, s.folds, s.repeats, params.seed)

    def training(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features, labels and loss weights that train on ``rows`` (indices into the labelled set);
        a CV fold (not every labelled item) leaves out synthetic items made from the labelled ones."""
        Xa, ya, src = self.aug
        keep = np.isin(src, rows)
        fold = self.mode == "cv" and len(np.unique(rows)) < len(self.y)
        syn = ~self.syn_derived if fold else np.ones(len(self.y_syn), bool)
        X = np.concatenate([self.X[rows], Xa[keep], self.X_syn[syn]])
        y = np.concatenate([self.y[rows], ya[keep], self.y_syn[syn]])
        w = np.r_[np.ones(len(rows) + int(keep.sum())), np.full(int(syn.sum()), self.syn_weight)]
        return X, y.astype(np.int64), w.astype(np.float32)


def fit_recipe(data: TrainingSet, rows: np.ndarray, recipe: HeadRecipe, params: Params, n_classes: int, seed: int,
               val: tuple | None = None) -> tuple[Head, dict]:
    """The recipe's head trained on ``rows`` of the labelled set; with self-training, refitted once
    with the unlabelled images it labels with probability >= semi_supervised.threshold (most
    confident first, at most ratio x each class's labelled count), weighted semi_supervised.weight.
    Returns the head and what the pseudo-labels were (count, accuracy where the truth is known)."""
    X, y, w = data.training(rows)
    Xv, yv = val if val is not None else (None, None)
    head = fit_head(X, y, n_classes, recipe, params.train_head, seed, w, Xv, yv).head
    if not recipe.self_training or data.U is None or not len(data.U):
        return head, {}
    s = params.semi_supervised
    chosen, pred, info = pseudo_labels(head, data.U, data.U_truth, np.bincount(data.y[rows], minlength=n_classes),
                                       params)
    head = fit_head(np.concatenate([X, data.U[chosen]]), np.concatenate([y, pred[chosen]]), n_classes, recipe,
                    params.train_head, seed, np.r_[w, np.full(len(chosen), s.weight, np.float32)], Xv, yv).head
    return head, info


def pseudo_labels(head: Head, U: np.ndarray, truth: np.ndarray, labelled_per_class: np.ndarray,
                  params: Params) -> tuple[np.ndarray, np.ndarray, dict]:
    """The unlabelled images ``head`` labels with probability >= semi_supervised.threshold, most
    confident first and at most ratio x each class's labelled count: their indices, every image's
    predicted class, and what they were (count, accuracy where the truth is known, >= 0)."""
    s = params.semi_supervised
    proba = predict_proba(head, U)
    conf, pred = proba.max(1), proba.argmax(1)
    chosen = np.concatenate([idx[np.argsort(-conf[idx], kind="stable")][: int(s.ratio * labelled_per_class[c])]
                             for c in range(len(labelled_per_class))
                             for idx in [np.flatnonzero((pred == c) & (conf >= s.threshold))]]).astype(int)
    known = truth[chosen] >= 0
    return chosen, pred, {"pseudo_labels": int(len(chosen)), "unlabeled": int(len(U)),
                          "pseudo_label_accuracy": float((pred[chosen][known] == truth[chosen][known]).mean())
                          if known.any() else None}
