"""The encoder interface: what the pipeline needs from a pretrained network, whatever its input.

Images: pipeline_lib.image.backbones.Backbone (torchvision and timm). Texts:
pipeline_lib.text.encoder.TextEncoder (a sentence-transformers model: tokenisation and truncation
instead of pixels, transformer layers as blocks). Each modality's ``load_encoder`` builds its own
(pipeline_lib.modalities); the feature cache, the heads and selection work unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn


@runtime_checkable
class Encoder(Protocol):
    name: str
    feature_dim: int
    weights_sha256: str  # of the weights file(s): in the cache key and the reports
    model: nn.Module  # the frozen network (what fine-tuning trains)
    preprocess: nn.Module  # raw input batch -> the network's input (inside the deployed model)
    precision: str  # of its forward passes: "fp32" until to() resolves runtime.precision on the device

    @property
    def key(self) -> str:
        """Cache key: changes whenever the vectors would (model, weights hash, preprocessing)."""

    def to(self, device, precision: str = "auto") -> "Encoder":
        """The encoder on ``device``, its forward passes under runtime.precision's autocast (its
        vectors stay fp32); returns itself."""

    def embed(self, items: Sequence[str | Path], batch_size: int, device: torch.device,
              desc: str = "featurize") -> np.ndarray:
        """One vector per item (a file), batched, with a progress bar. (An image backbone also has
        ``embed_mirrored``, for flip test-time augmentation.)"""

    def blocks(self) -> list[nn.Module]:
        """The blocks fine-tuning may unfreeze, input side first (empty: nothing to fine-tune)."""
