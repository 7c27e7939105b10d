"""The encoder interface: what the pipeline needs from a pretrained network, whatever its input.

Images: pipeline_lib.image.backbones.Backbone (torchvision and timm). Texts: pipeline_lib.text.TextEncoder
(a sentence-transformers model: tokenisation and truncation instead of pixels, transformer layers
as blocks). Both implement the same five things, and the feature cache, the heads and selection
work unchanged. ``load_encoder`` is the one place that picks the implementation.
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

    @property
    def key(self) -> str:
        """Cache key: changes whenever the vectors would (model, weights hash, preprocessing)."""

    def embed(self, items: Sequence[str | Path], batch_size: int, device: torch.device, desc: str = "featurize",
              flip: bool = False) -> np.ndarray:
        """One vector per item (a file), batched, with a progress bar."""

    def blocks(self) -> list[nn.Module]:
        """The blocks fine-tuning may unfreeze, input side first (backbones.BLOCK_SPLITS)."""


def encoder_names(params, text: bool) -> list[str]:
    """The candidate encoders featurize embeds with: text.encoder for texts, backbone.name's for images."""
    return [params.text.encoder] if text else params.backbone.names


def load_encoder(params, root: Path | None, name: str, text: bool) -> Encoder:
    """The frozen encoder ``name`` as params describe it (a text data set: the sentence encoder)."""
    if text:
        from .text.encoder import load_text_encoder

        return load_text_encoder(name, params.text.max_length, root)
    from .image.backbones import backbone_for

    return backbone_for(params, root, name)
