"""The image generators of the synthesize stage (synthetic.generator): a class-conditional DDPM
trained on the real training images, or Stable Diffusion (text-to-image, or img2img variations of
the real images); and the preview grid of real and synthetic images per class. The stage filters,
caps and records what they return (pipeline_lib.stages.synthesize)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd

from .. import atomic
from ..config import Params
from ..errors import PipelineError
from ..modality import Generation
from ..paths import Paths
from .files import read_rgb


def real_images(paths: Paths, train: pd.DataFrame, n_classes: int, k: int | None = None) -> dict[int, list[np.ndarray]]:
    """The real training images of each class (the first k)."""
    return {c: [read_rgb(paths.resolve(p)) for p in train.loc[train["label_idx"] == c, "path"][:k]]
            for c in range(n_classes)}


def ddpm(params: Params, paths: Paths, train: pd.DataFrame, classes: list[str], device) -> Generation:
    """Train the DDPM (once per real images, params and seed; cached) and sample it; models/ddpm
    holds a copy of the model. A class without real images cannot be drawn: the report says so."""
    from .generators import sample_ddpm

    s = params.synthetic
    real = real_images(paths, train, len(classes))
    model_dir, info = _ddpm_model(params, paths, train, real, len(classes), device)
    seen = [c for c in range(len(classes)) if real[c]]  # a DDPM cannot draw a class it never saw
    items = sample_ddpm(model_dir, len(classes), s.per_class, s.ddpm, params.seed, _common_size(train), device,
                        class_ids=seen)
    info = {f"ddpm_{k}": v for k, v in info.items()}
    unseen = [label for c, label in enumerate(classes) if not real[c]]
    if unseen:
        info["ddpm_not_generated"] = {"classes": unseen, "reason": "the ddpm learns from real images; a class with "
                                      "none (data.zero_shot_classes) needs synthetic.generator: stable_diffusion"}
    return Generation(items, atomic.dir_hash(model_dir), info)


def stable_diffusion(params: Params, paths: Paths, train: pd.DataFrame, classes: list[str], device) -> Generation:
    """Stable Diffusion from a local folder: prompts per class, or img2img variations of the real images."""
    from .generators import sample_stable_diffusion

    s = params.synthetic
    _common_size(train)
    items, model_hash = sample_stable_diffusion(s.stable_diffusion, classes, s.per_class, params.seed, device,
                                                real_images(paths, train, len(classes)))
    return Generation(items, model_hash)


GENERATORS = {"ddpm": ddpm, "stable_diffusion": stable_diffusion}


def _common_size(train: pd.DataFrame) -> tuple[int, int]:
    """Generated images get the real training images' most common size."""
    if train.empty:
        raise PipelineError("synthesize: the training split is empty (check data.* params)")
    h, w = train.groupby(["height", "width"]).size().idxmax()
    return int(h), int(w)


def _ddpm_model(params: Params, paths: Paths, train: pd.DataFrame, real: dict, n_classes: int, device):
    """Train the DDPM once per (real training images, ddpm params, seed) and reuse it afterwards."""
    from .generators import train_ddpm

    p = params.synthetic.ddpm
    key = hashlib.sha256(json.dumps({
        "images": sorted(zip(train["item_id"], train["label_idx"].astype(int).tolist())),
        "ddpm": p.model_dump(exclude={"checkpoint_every"}), "seed": params.seed}, sort_keys=True).encode()).hexdigest()[:16]
    cached = paths.ddpm_cache / key
    reused = (cached / "training.json").exists()
    if not reused:
        images = [img for c in range(n_classes) for img in real[c]]
        if len({img.shape for img in images}) > 1:  # mixed sizes: one size before stacking
            images = [_fit(img, (p.resolution, p.resolution, 3)) for img in images]
        labels = np.array([c for c in range(n_classes) for _ in real[c]])
        partial = paths.ddpm_cache / f"{key}.partial.pt"
        with atomic.replace_dir(cached) as staging:
            train_ddpm(np.stack(images), labels, n_classes, p, params.seed, staging, device, checkpoint=partial)
        partial.unlink(missing_ok=True)
    info = json.loads((cached / "training.json").read_text())
    with atomic.replace_dir(paths.ddpm_dir) as staging:  # the DVC output: a copy of the cached model
        shutil.copytree(cached, staging, dirs_exist_ok=True)
    return paths.ddpm_dir, {**info, "reused": reused}


def preview(frame: pd.DataFrame, train: pd.DataFrame, classes: list[str], params: Params, paths: Paths) -> None:
    """One row per class: real training images, then synthetic ones (kept first); without any
    synthetic image (synthesis off), the real ones only."""
    from ..plots import plot_image_grid

    k = params.synthetic.preview_per_class
    real = real_images(paths, train, len(classes), k)
    n_real = max((len(real[c][:k]) for c in range(len(classes))), default=0)
    n_syn = k if len(frame) else 0
    rows = []
    for c, label in enumerate(classes):
        reals = real[c][:k]
        syn_rows = frame[frame["label_idx"] == c].sort_values("kept", ascending=False, kind="stable").head(k)
        syns = [read_rgb(paths.synthetic_dir / "images" / f"{i}.png") for i in syn_rows["item_id"]]
        sample = (reals + syns)[0] if reals + syns else np.zeros((8, 8, 3), np.uint8)
        blank = np.full_like(sample, 255)
        pad = lambda imgs, n: imgs + [blank] * (n - len(imgs))  # noqa: E731
        rows.append((label, pad(reals, n_real) + pad([_fit(img, sample.shape) for img in syns], n_syn)))
    plot_image_grid(rows, [f"real {i + 1}" for i in range(n_real)] + [f"synthetic {i + 1}" for i in range(n_syn)],
                    paths.synthetic_preview)


def _fit(img: np.ndarray, shape) -> np.ndarray:
    if img.shape == shape:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR))
