"""The deployable classifier: preprocessing + frozen backbone + trained head, in one nn.Module.

Input: float32 RGB batch (N, 3, H, W) with values in [0, 1] (any H, W; resized inside).
Output: class probabilities (N, n_classes), in the order of ``classes``.
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Preprocess, load_backbone
from .config import Params, Paths
from .heads import Head, load_head


class Classifier(nn.Module):
    def __init__(self, preprocess: Preprocess, backbone: nn.Module, head: Head, classes: list[str]):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.classes = list(classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.backbone(self.preprocess(images))), dim=1)


def build_classifier(params: Params, paths: Paths, candidate: str = "head") -> Classifier:
    """The deployable model: the frozen backbone + trained head, or the fine-tuned network."""
    head, meta = load_head(paths.head, paths.head_meta)
    if candidate == "finetune":
        from .finetune import load_finetuned

        tuned = load_finetuned(params, paths)
        return Classifier(tuned.preprocess, tuned.backbone, tuned.head, meta["classes"]).eval()
    bb = load_backbone(params.backbone.name, params.backbone.weights, params.backbone.resolution, paths.root)
    return Classifier(bb.preprocess, bb.model, head, meta["classes"]).eval()
