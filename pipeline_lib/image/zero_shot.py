"""The image zero-shot baseline (evaluate: what zero real labels buys):

- ``clip``: image-text similarity with a CLIP-style model from a local directory
  (``evaluate.zero_shot_model``; transformers' CLIPModel + CLIPProcessor layout), prompts from
  ``synthetic.stable_diffusion.prompt`` / ``class_prompts``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import PipelineError


def clip_zero_shot(model_dir: str | Path, prompts: list[str], images: list[np.ndarray],
                   batch_size: int = 64) -> np.ndarray:
    """Class probabilities (softmax over prompt similarities) for uint8 HWC images."""
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise PipelineError(f"evaluate.zero_shot_model: {path} is not a CLIP model directory (config.json missing); "
                            "save one with CLIPModel.save_pretrained + CLIPProcessor.save_pretrained, or set it to ''")
    from .generators import quiet_hf

    quiet_hf()
    model = CLIPModel.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    with torch.no_grad():
        text = model.get_text_features(**processor(text=prompts, padding=True, return_tensors="pt"))
        text = torch.nn.functional.normalize(_as_tensor(text), dim=-1)
        out = []
        for i in range(0, len(images), batch_size):
            pil = [Image.fromarray(img) for img in images[i:i + batch_size]]
            img = model.get_image_features(**processor(images=pil, return_tensors="pt"))
            img = torch.nn.functional.normalize(_as_tensor(img), dim=-1)
            out.append(torch.softmax(model.logit_scale.exp() * img @ text.T, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(prompts)), np.float32)


def _as_tensor(x) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if isinstance(x, torch.Tensor):
        return x
    return getattr(x, "pooler_output", None) if getattr(x, "pooler_output", None) is not None else x[0]
