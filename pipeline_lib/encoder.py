"""The encoder interface: what the pipeline needs from a pretrained network, whatever its input.

Images: pipeline_lib.backbones.Backbone (torchvision and timm). A text encoder (a
sentence-transformers model: tokenisation and truncation instead of pixels, transformer layers
as blocks) implements the same five things, and the feature cache, the heads, selection and
fine-tuning's block unfreezing work unchanged.
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
    model: nn.Module  # the frozen network (what fine-tuning trains)
    preprocess: nn.Module  # raw input batch -> the network's input (inside the deployed model)

    @property
    def key(self) -> str:
        """Cache key: changes whenever the vectors would (model, weights hash, preprocessing)."""

    def embed(self, items: Sequence[str | Path], batch_size: int, device: torch.device, desc: str = "featurize",
              flip: bool = False) -> np.ndarray:
        """One vector per item (a file), batched, with a progress bar."""

    def blocks(self) -> list[nn.Module]:
        """The blocks fine-tuning may unfreeze, input side first (backbones.BLOCK_SPLITS)."""
