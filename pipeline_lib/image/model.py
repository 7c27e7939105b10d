"""The deployable classifier: preprocessing + backbone + head in one nn.Module, with its classes.

Input: float32 RGB batch (N, 3, H, W) with values in [0, 1] (any H, W; resized inside).
Output: class probabilities (N, n_classes), in the order of ``classes``; with ``tta`` the average
of the image's and its horizontal mirror's (test-time augmentation, when the selection chose it).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Params
from ..heads import load_head
from ..paths import Paths
from .backbones import chosen_backbone
from .networks import FinetuneModel, class_proba, load_finetuned


class Classifier(nn.Module):
    def __init__(self, network: FinetuneModel, classes: list[str], tta: bool = False):
        super().__init__()
        self.network = network
        self.classes = list(classes)
        self.tta = tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return class_proba(self.network, images, self.tta)


def build_classifier(params: Params, paths: Paths, candidate: str = "head") -> Classifier:
    """The deployable model named by evaluate's candidate: "head" (frozen backbone + trained head)
    or "finetune" (the fine-tuned network), with a "_tta" suffix when flip averaging was chosen."""
    name, tta = candidate.removesuffix("_tta"), candidate.endswith("_tta")
    head, meta = load_head(paths.head, paths.head_meta)
    if name == "finetune":
        network = load_finetuned(params, paths)
    else:
        bb = chosen_backbone(params, paths)
        network = FinetuneModel(bb.preprocess, bb.model, head)
    return Classifier(network, meta["classes"], tta=tta).eval()
