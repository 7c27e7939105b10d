"""Domain-adversarial training (DANN, Ganin & Lempitsky 2015) for finetune's ``adapt: dann``.

A gradient-reversal layer sits between the backbone's pooled features and a small domain
classifier that tells source images (the labelled training set: real + synthetic) from target
images (``data.unlabeled``: unlabelled images from the deployment domain; by default the real
training images without their labels). The classifier learns to separate the domains; the
reversed gradient teaches the backbone features that it cannot, i.e. domain-invariant features.
The adversarial weight ramps from 0 to ``finetune.dann_weight`` with the usual schedule
2 / (1 + exp(-10 p)) - 1 over training progress p.

A domain accuracy near 0.5 means aligned features. When the two domains share little beyond the
labels, or the target set is tiny, the alignment can destroy class information: DANN can hurt,
which is why it is off by default and the evaluation compares it on val like any other run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config import Params
from ..errors import PipelineError
from ..paths import Paths
from .files import IMAGE_EXTENSIONS


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


def reverse_gradient(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by -lam on the way back."""
    return _ReverseGrad.apply(x, lam)


class DomainClassifier(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor, lam: float) -> torch.Tensor:
        return self.net(reverse_gradient(features, lam)).squeeze(1)


def dann_lambda(progress: float, weight: float) -> float:
    return weight * (2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0)


def target_files(params: Params, paths: Paths) -> list[str]:
    """The unlabelled target images: files under data.unlabeled, or [] (= the real training images)."""
    if params.finetune.adapt != "dann" or not params.data.unlabeled:
        return []
    folder = paths.resolve(params.data.unlabeled)
    if not folder.is_dir():
        raise PipelineError(f"data.unlabeled: folder {folder} not found (a folder of unlabelled images from the "
                            "deployment domain, any layout; or null to use the training images without labels)")
    files = sorted(str(f.relative_to(folder)) for f in folder.rglob("*")
                   if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise PipelineError(f"data.unlabeled: no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return files


def load_target_images(params: Params, paths: Paths, real_train_pixels: Callable[[], list[np.ndarray]]
                       ) -> tuple[list, list]:
    """(pixels, skipped) of the target domain (without data.unlabeled: ``real_train_pixels()``, the
    training images without their labels); unreadable files are skipped and listed, not fatal."""
    from ..errors import BadItem
    from .files import load_image

    files = target_files(params, paths)
    if not files:
        return real_train_pixels(), []
    folder = paths.resolve(params.data.unlabeled)
    pixels, skipped = [], []
    for rel in files:
        try:
            pixels.append(load_image(Path(folder) / rel, params.data.min_image_size,
                                     params.data.on_unusual_mode).pixels)
        except BadItem as exc:
            skipped.append({"path": rel, "reason": exc.reason})
    if not pixels:
        raise PipelineError(f"data.unlabeled: none of the {len(files)} files under {folder} is a readable image "
                            f"(first problem: {skipped[0]['reason']})")
    return pixels, skipped
