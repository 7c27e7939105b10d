"""Preprocess -> backbone -> head as one network (what fine-tuning trains and evaluate scores),
the labelled images it runs on, and loading the fine-tuned network finetune saved."""

from __future__ import annotations

import copy
import json
import math
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import Params
from ..heads import Head, load_head
from ..paths import Paths
from ..runtime import autocast, chunks, is_cuda, lanes_map, load_batches
from .augmentation import make_policy, seed_draws
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


class SeededDropout(nn.Module):
    """Dropout whose masks come from ``generator`` (set by the trainer each epoch), not from torch's
    global generator: fold runs that train side by side in threads would interleave their draws
    there, and the result would depend on timing."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator)
        return x * keep / (1.0 - self.p)


def _seed_dropouts(module: nn.Module, p: float) -> None:
    """Replace every nn.Dropout under ``module`` by a SeededDropout of rate ``p``."""
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout):
            setattr(module, name, SeededDropout(p))
        else:
            _seed_dropouts(child, p)


def class_proba(model: FinetuneModel, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Class probabilities of a batch; ``tta``: averaged with those of the mirror images (the one
    implementation of flip test-time augmentation on images)."""
    proba = torch.softmax(model(images).float(), dim=1)
    if tta:
        proba = (proba + torch.softmax(model(images.flip(-1)).float(), dim=1)) / 2
    return proba


def decoded_mb(files: list[Path]) -> float:
    """The size of the images once decoded to 8-bit RGB, from the files' headers (nothing decoded)."""
    total = 0
    for f in files:
        with Image.open(f) as img:
            total += img.width * img.height * 3
    return total / 2**20


class Images:
    """A split's images with labels and loss weights, for fine-tuning and scoring; items resized
    to the model input.

    The decoded pixels are held in memory when they fit in ``hold_mb`` (runtime.hold_images_mb),
    else read from disk at every access. An item is a function of its index and the epoch alone
    (its augmentation is seeded by (``augment``'s seed, epoch, index)), so a batch is the same
    whichever process makes it: this one, or any of runtime.loader_workers' DataLoader workers.
    """

    def __init__(self, frame, paths: Paths, preprocess: Preprocess, weights=None, hold_mb: float = math.inf):
        files = [paths.resolve(p) for p in frame["path"]]
        held = hold_mb == math.inf or decoded_mb(files) <= hold_mb
        self._set(files, [read_rgb(f) for f in files] if held else None,
                  torch.tensor(frame["label_idx"].to_numpy().astype(np.int64), dtype=torch.long), weights, preprocess)

    @classmethod
    def unlabeled(cls, pixels: list[np.ndarray], preprocess: Preprocess) -> "Images":
        """Decoded images without labels (DANN's target domain)."""
        out = cls.__new__(cls)
        out._set([], list(pixels), torch.full((len(pixels),), -1, dtype=torch.long), None, preprocess)
        return out

    def _set(self, files: list, pixels: list | None, labels: torch.Tensor, weights, preprocess: Preprocess) -> None:
        self.files, self.pixels, self.labels = files, pixels, labels
        self.weights = torch.ones(len(labels)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
        self.resizer = Preprocess(preprocess.resolution)  # a CPU copy: worker processes resize too
        self.augment: tuple | None = None  # (augment.policy, [ints]) in a copy made by augmented()
        self._policies: dict = {}

    def augmented(self, policy, seed: list[int]) -> "Images":
        """The same images, each item augmented by ``policy`` with the draw of (``seed``, epoch,
        index) whenever an epoch is given (fine-tuning's online augmentation); self is unchanged."""
        out = copy.copy(self)
        out.augment, out._policies = (policy, list(seed)), {}
        return out

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        """Item ``i``'s decoded pixels (uint8 HWC)."""
        return self.pixels[i] if self.pixels is not None else read_rgb(self.files[i])

    def item(self, i: int, epoch: int | None = None) -> torch.Tensor:
        """Item ``i`` as the model's input; augmented with the draw of ``epoch`` when given (and
        ``augment`` is set)."""
        img = self.image(i)
        if epoch is not None and self.augment is not None:
            policy, seed = self.augment
            if img.shape[:2] not in self._policies:
                self._policies[img.shape[:2]] = make_policy(policy, *img.shape[:2])
            compose = self._policies[img.shape[:2]]
            seed_draws(compose, [*seed, epoch, i])
            img = compose(image=img)["image"]
        return self.resizer.resize(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0))

    def batch(self, idx, epoch: int | None = None) -> torch.Tensor:
        return torch.stack([self.item(i, epoch) for i in idx])

    def labelled_batch(self, idx: list[int], epoch: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, labels, loss weights) of the items ``idx``."""
        return self.batch(idx, epoch), self.labels[idx], self.weights[idx]

    def batches(self, index_batches: list[list[int]], epoch: int | None = None, workers: int = 0, pin: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """labelled_batch of each list of indices, in order, made by ``workers`` DataLoader processes
        (0: in this process); ``pin``: in page-locked memory, for copies to CUDA."""
        return load_batches(partial(self.labelled_batch, epoch=epoch), index_batches, workers, pin)


def predict_proba(model: FinetuneModel, data: Images, batch_size: int = 64, device="cpu",
                  tta: bool = False, mirrored: bool = False, precision: str = "auto", workers: int = 0) -> np.ndarray:
    """Class probabilities (fp32, under runtime.precision's autocast); ``tta`` averages them with
    those of the horizontally flipped image; ``mirrored``: those of the flipped image alone;
    ``workers``: DataLoader processes decoding the images (runtime.loader_workers)."""
    model.eval()
    cuda = is_cuda(device)

    def proba(batch) -> np.ndarray:  # in a lane's thread (runtime.lanes_map): its own contexts
        x = batch[0].to(device, non_blocking=cuda)
        with torch.no_grad(), autocast(device, precision):
            return class_proba(model, x.flip(-1) if mirrored else x, tta).float().cpu().numpy()

    out = list(lanes_map(proba, data.batches(chunks(list(range(len(data))), batch_size), workers=workers, pin=cuda),
                         device))
    return np.concatenate(out) if out else np.zeros((0, model.head.config["n_classes"]), np.float32)


def build_model(params: Params, paths: Paths, head: Head | None = None) -> tuple[FinetuneModel, dict]:
    """Backbone + head (the trained head of models/head.pt unless one is given)."""
    loaded, meta = load_head(paths.head, paths.head_meta)
    head = head if head is not None else loaded
    _seed_dropouts(head, params.finetune.dropout)  # the fine-tuning dropout replaces the head's
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
