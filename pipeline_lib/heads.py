"""New output layers trained on cached features: linear (multinomial logistic regression) or an
MLP with dropout; weight decay, class weighting, early stopping on val, seeded."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import atomic
from .config import TrainHeadParams
from .errors import PipelineError


class Head(nn.Module):
    """Standardisation (fitted on train features) followed by a linear layer or a small MLP."""

    def __init__(self, in_dim: int, n_classes: int, kind: str = "linear", hidden_dim: int = 256,
                 dropout: float = 0.0):
        super().__init__()
        self.config = {"in_dim": in_dim, "n_classes": n_classes, "kind": kind, "hidden_dim": hidden_dim,
                       "dropout": dropout}
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        if kind == "linear":
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_classes))
        elif kind == "mlp":
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim), nn.ReLU(),
                                     nn.Dropout(dropout), nn.Linear(hidden_dim, n_classes))
        else:
            raise PipelineError(f"train_head.kind: {kind!r}; allowed values: 'linear', 'mlp'")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net((features - self.mean) / self.scale)


@dataclass(frozen=True)
class HeadRecipe:
    """One candidate head: its kind and, for the linear head, the inverse L2 strength C."""

    kind: str = "linear"
    C: float | None = 1.0
    self_training: bool = False  # refit with pseudo-labelled unlabelled images (semi_supervised.*)

    @property
    def name(self) -> str:
        return (f"linear C={self.C:g}" if self.kind == "linear" else self.kind) + (
            " + self-training" if self.self_training else "")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "C": self.C, "self_training": self.self_training}


def recipes(p: TrainHeadParams, self_training: bool = False) -> list[HeadRecipe]:
    """Every head recipe train_head.kinds and train_head.C describe, simplest (most regularised)
    first; with ``self_training`` each also with self-training on the unlabelled images."""
    out = []
    for kind in p.kinds:
        out += [HeadRecipe("linear", c) for c in p.C] if kind == "linear" else [HeadRecipe(kind, None)]
    return out + [HeadRecipe(r.kind, r.C, True) for r in out] if self_training else out


@dataclass
class TrainResult:
    head: Head
    best_epoch: int
    epochs_run: int
    best_val_loss: float | None
    history: list[dict] = field(default_factory=list)


def class_weights(y: np.ndarray, n_classes: int, mode: str) -> torch.Tensor:
    if mode == "none":
        return torch.ones(n_classes)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


ABSENT_BIAS = -30.0  # logit of a class with no training example: never predicted


def fit_head(X_train: np.ndarray, y_train: np.ndarray, n_classes: int, recipe: HeadRecipe, p: TrainHeadParams,
             seed: int, sample_weight: np.ndarray | None = None, X_val: np.ndarray | None = None,
             y_val: np.ndarray | None = None) -> TrainResult:
    """A head of the given recipe. The linear head is scikit-learn's multinomial logistic regression
    (L-BFGS to convergence: the exact L2-regularised optimum, in well under a second), copied into a
    torch ``Head`` so fine-tuning and export see one module type; the MLP is trained by
    ``train_head`` (full-batch AdamW, early stopping when a val split is given)."""
    if recipe.kind == "mlp":
        return train_head(X_train, y_train, X_val, y_val, n_classes, p, seed, sample_weight)
    if len(X_train) == 0:
        raise PipelineError("train_head: the training split is empty (check data.* params and the ingest report)")
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    X = np.asarray(X_train, np.float64)
    mean = X.mean(0) if p.standardize else np.zeros(X.shape[1])
    scale = np.clip(X.std(0), 1e-6, None) if p.standardize else np.ones(X.shape[1])
    w = np.ones(len(y_train)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w * class_weights(y_train, n_classes, p.class_weighting).numpy()[y_train]
    head = Head(X.shape[1], n_classes, "linear", dropout=p.dropout)
    head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    head.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
    linear = head.net[-1]
    present = np.unique(y_train)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(ABSENT_BIAS)
        if len(present) == 1:
            linear.bias[present[0]] = 0.0
        else:
            lr = LogisticRegression(C=recipe.C, max_iter=2000, tol=1e-6)
            # one BLAS thread: these problems are small, and with another busy process on the cores
            # multi-threaded BLAS spin-waits (a Lite2 fit took 8 s instead of 0.3 s, measured)
            with threadpool_limits(limits=1):
                # the loss is a weighted mean, so C means the same whatever the number of images
                lr.fit((X - mean) / scale, y_train, sample_weight=w * len(w) / w.sum())
            coef, bias = lr.coef_, lr.intercept_
            if len(present) == 2:  # scikit-learn's binary form: one logit difference
                coef, bias = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
            linear.weight[present] = torch.as_tensor(coef, dtype=torch.float32)
            linear.bias[present] = torch.as_tensor(bias, dtype=torch.float32)
    head.eval()
    return TrainResult(head=head, best_epoch=1, epochs_run=1, best_val_loss=None)


def train_head(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None,
               n_classes: int, p: TrainHeadParams, seed: int, sample_weight: np.ndarray | None = None) -> TrainResult:
    """The MLP head: full-batch AdamW on the features for ``max_epochs``; with a val split, early
    stopping keeps the epoch with the lowest val loss.

    ``sample_weight`` scales each training example's loss (synthetic images are down-weighted)."""
    if len(X_train) == 0:
        raise PipelineError("train_head: the training split is empty (check data.* params and the ingest report)")
    torch.manual_seed(seed)
    Xt = torch.as_tensor(X_train, dtype=torch.float32)
    yt = torch.tensor(y_train, dtype=torch.long)
    has_val = X_val is not None and len(X_val) > 0
    Xv = torch.as_tensor(X_val, dtype=torch.float32) if has_val else None
    yv = torch.as_tensor(y_val, dtype=torch.long) if has_val else None

    head = Head(Xt.shape[1], n_classes, "mlp", p.hidden_dim, p.dropout)
    if p.standardize:
        head.mean.copy_(Xt.mean(0))
        head.scale.copy_(Xt.std(0, unbiased=False).clamp_min(1e-6))
    weights = class_weights(y_train, n_classes, p.class_weighting)
    sw = torch.ones(len(yt)) if sample_weight is None else torch.as_tensor(sample_weight, dtype=torch.float32)
    norm = (weights[yt] * sw).sum().clamp_min(1e-12)
    opt = torch.optim.AdamW(head.parameters(), lr=p.lr, weight_decay=p.weight_decay)

    best_state, best_loss, best_epoch, stale = None, float("inf"), 0, 0
    history: list[dict] = []
    epoch = 0
    for epoch in range(1, p.max_epochs + 1):
        head.train()
        opt.zero_grad(set_to_none=True)
        logits = head(Xt)
        loss = (F.cross_entropy(logits, yt, weight=weights, reduction="none") * sw).sum() / norm
        loss.backward()
        opt.step()
        row = {"epoch": epoch, "train_loss": loss.item(),
               "train_accuracy": float((logits.argmax(1) == yt).float().mean())}
        if has_val:
            head.eval()
            with torch.no_grad():
                vlogits = head(Xv)
                vloss = float(F.cross_entropy(vlogits, yv))
            row.update(val_loss=vloss, val_accuracy=float((vlogits.argmax(1) == yv).float().mean()))
            if vloss < best_loss - 1e-6:
                best_loss, best_epoch, stale = vloss, epoch, 0
                best_state = copy.deepcopy(head.state_dict())
            else:
                stale += 1
        history.append(row)
        if has_val and stale >= p.patience:
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return TrainResult(head=head, best_epoch=best_epoch or epoch, epochs_run=epoch,
                       best_val_loss=best_loss if has_val else None, history=history)



def save_head(head: Head, path: Path, meta_path: Path, meta: dict) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save(head.state_dict(), tmp)
    atomic.write_json(meta_path, {**meta, "head": head.config})


def load_head(path: Path, meta_path: Path) -> tuple[Head, dict]:
    if not path.exists() or not meta_path.exists():
        raise PipelineError(f"{path} not found: run the train_head stage first (dvc repro train_head).")
    meta = json.loads(meta_path.read_text())
    head = Head(**meta["head"])
    head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    head.eval()
    return head, meta


@torch.no_grad()
def head_logits(head: Head, X: np.ndarray) -> np.ndarray:
    head.eval()
    return head(torch.as_tensor(X, dtype=torch.float32)).numpy()


def predict_proba(head: Head, X: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(head_logits(head, X)), dim=1).numpy()
