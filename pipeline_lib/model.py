"""The deployable classifier: preprocessing + frozen backbone + trained head, in one nn.Module.

Input: float32 RGB batch (N, 3, H, W) with values in [0, 1] (any H, W; resized inside).
Output: class probabilities (N, n_classes), in the order of ``classes``; with ``tta`` the average
of the image's and its horizontal mirror's (test-time augmentation, chosen by evaluate on val).
"""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Preprocess, chosen_backbone
from .config import Params, Paths
from .heads import Head, load_head


class Classifier(nn.Module):
    def __init__(self, preprocess: Preprocess, backbone: nn.Module, head: Head, classes: list[str],
                 tta: bool = False):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.classes = list(classes)
        self.tta = tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        proba = torch.softmax(self.head(self.backbone(self.preprocess(images))), dim=1)
        if self.tta:
            proba = (proba + torch.softmax(self.head(self.backbone(self.preprocess(images.flip(-1)))), dim=1)) / 2
        return proba


def build_classifier(params: Params, paths: Paths, candidate: str = "head") -> Classifier:
    """The deployable model named by evaluate's candidate: "head" (frozen backbone + trained head)
    or "finetune" (the fine-tuned network), with a "_tta" suffix when flip averaging won on val."""
    name, tta = candidate.removesuffix("_tta"), candidate.endswith("_tta")
    head, meta = load_head(paths.head, paths.head_meta)
    if name == "finetune":
        from .networks import load_finetuned

        tuned = load_finetuned(params, paths)
        preprocess, backbone, head = tuned.preprocess, tuned.backbone, tuned.head
    else:
        bb = chosen_backbone(params, paths)
        preprocess, backbone = bb.preprocess, bb.model
    return Classifier(preprocess, backbone, head, meta["classes"], tta=tta).eval()
