"""Preprocess -> backbone -> head as one network (what fine-tuning trains and evaluate scores),
the labelled images it runs on, and loading the fine-tuned network finetune saved."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from ..config import Params
from ..heads import Head, load_head
from ..paths import Paths
from ..runtime import autocast
from .backbones import Preprocess, chosen_backbone
from .files import read_rgb


class FinetuneModel(nn.Module):
    """preprocess -> backbone -> head; outputs logits. BatchNorm stays in eval mode."""

    def __init__(self, preprocess: Preprocess, backbone: nn.Module, head: Head, bn_train: bool = False):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head
        self.bn_train = bn_train

    def train(self, mode: bool = True) -> "FinetuneModel":
        super().train(mode)
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                trainable = any(q.requires_grad for q in module.parameters())
                module.train(mode and self.bn_train and trainable)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def class_proba(model: FinetuneModel, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Class probabilities of a batch; ``tta``: averaged with those of the mirror images (the one
    implementation of flip test-time augmentation on images)."""
    proba = torch.softmax(model(images).float(), dim=1)
    if tta:
        proba = (proba + torch.softmax(model(images.flip(-1)).float(), dim=1)) / 2
    return proba


class Images:
    """The split's images in memory (uint8 HWC) with labels; batches resized to the model input."""

    def __init__(self, frame, paths: Paths, preprocess: Preprocess, weights=None):
        self.pixels = [read_rgb(paths.resolve(p)) for p in frame["path"]]
        self.labels = torch.tensor(frame["label_idx"].to_numpy().astype(np.int64), dtype=torch.long)
        self.weights = torch.ones(len(self.pixels)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.preprocess = preprocess

    @classmethod
    def unlabeled(cls, pixels: list[np.ndarray], preprocess: Preprocess) -> "Images":
        out = cls.__new__(cls)
        out.pixels, out.preprocess = list(pixels), preprocess
        out.labels = torch.full((len(out.pixels),), -1, dtype=torch.long)
        out.weights = torch.ones(len(out.pixels))
        return out

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, idx, policies: dict | None = None) -> torch.Tensor:
        out = []
        for i in idx:
            img = self.pixels[i]
            if policies is not None:
                img = policies[img.shape[:2]](image=img)["image"]
            tensor = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
            out.append(self.preprocess.resize(tensor))
        return torch.stack(out)


def predict_proba(model: FinetuneModel, data: Images, batch_size: int = 64, device="cpu",
                  tta: bool = False, mirrored: bool = False, precision: str = "auto") -> np.ndarray:
    """Class probabilities (fp32, under runtime.precision's autocast); ``tta`` averages them with
    those of the horizontally flipped image; ``mirrored``: those of the flipped image alone."""
    model.eval()
    out = []
    with torch.no_grad(), autocast(device, precision):
        for i in range(0, len(data), batch_size):
            x = data.batch(list(range(i, min(i + batch_size, len(data))))).to(device)
            proba = class_proba(model, x.flip(-1) if mirrored else x, tta)
            out.append(proba.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.config["n_classes"]), np.float32)


def build_model(params: Params, paths: Paths, head: Head | None = None) -> tuple[FinetuneModel, dict]:
    """Backbone + head (the trained head of models/head.pt unless one is given)."""
    loaded, meta = load_head(paths.head, paths.head_meta)
    head = head if head is not None else loaded
    for module in head.modules():  # the fine-tuning dropout replaces the head's
        if isinstance(module, nn.Dropout):
            module.p = params.finetune.dropout
    bb = chosen_backbone(params, paths)
    return FinetuneModel(bb.preprocess, bb.model, head, bn_train=params.finetune.batchnorm == "train"), meta


def load_finetuned(params: Params, paths: Paths, device="cpu") -> FinetuneModel | None:
    """The fine-tuned classifier (eval mode, on ``device``), or None when finetune is disabled."""
    if not paths.finetuned_model.exists():
        return None
    meta = json.loads(paths.finetune_meta.read_text())
    head = Head(**meta["head"])
    bb = chosen_backbone(params, paths)
    model = FinetuneModel(bb.preprocess, bb.model, head)
    model.load_state_dict(torch.load(paths.finetuned_model, map_location=device, weights_only=True))
    return model.to(device).eval()
