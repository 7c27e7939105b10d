"""The image augmentation policy from params.yaml (albumentations). Offline copies (stage augment)
and online augmentation during fine-tuning use the same functions."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from ..config import Params
from ..dataset import copy_seed
from ..paths import Paths
from .files import read_rgb
from .params import AugmentPolicy


def make_policy(policy: AugmentPolicy, height: int, width: int, seed: int | None = None):
    """The albumentations pipeline for images of one size (output has the same size)."""
    import albumentations as A

    transforms = [
        A.HorizontalFlip(p=policy.hflip_p),
        A.VerticalFlip(p=policy.vflip_p),
        A.Affine(scale=(1 - policy.scale, 1 + policy.scale), translate_percent=(-policy.translate, policy.translate),
                 rotate=(-policy.rotate_limit, policy.rotate_limit), border_mode=0, fill=policy.fill,
                 p=policy.affine_p),
        A.RandomResizedCrop(size=(height, width), scale=(policy.crop_scale_min, 1.0), p=policy.crop_p),
        A.RandomBrightnessContrast(brightness_limit=policy.brightness_limit,
                                   contrast_limit=policy.contrast_limit, p=policy.brightness_contrast_p),
        A.GaussNoise(std_range=(policy.noise_std, policy.noise_std), p=policy.noise_p),
        A.Erasing(scale=(0.02, policy.erase_scale_max), fill=policy.fill, p=policy.erase_p),  # random erasing
    ]
    compose = A.Compose(transforms, seed=seed)
    if seed is not None:
        # albumentations 2.0.8 gives every transform the Compose's seed, so their "does it fire"
        # draws are identical (all fire or none do). Give each transform its own stream instead.
        for transform, child in zip(compose.transforms, np.random.SeedSequence(seed).spawn(len(transforms))):
            transform.set_random_seed(int(child.generate_state(1)[0]))
    return compose


def seed_draws(compose, entropy: list[int]) -> None:
    """Make a policy's next draws a function of ``entropy`` alone (fine-tuning: (seed, epoch, item)):
    one random stream shared by its transforms, so their draws follow each other instead of
    repeating; a tenth of what seeding each transform costs (0.02 ms an image)."""
    rng = np.random.default_rng(entropy)
    compose.set_random_state(rng, random.Random(int(rng.integers(2**62))))


def augment_image(pixels: np.ndarray, policy: AugmentPolicy, seed: int) -> np.ndarray:
    compose = make_policy(policy, pixels.shape[0], pixels.shape[1], seed=seed)
    return compose(image=pixels)["image"]


def preview(train: pd.DataFrame, params: Params, paths: Paths) -> None:
    """Grid PNG: one row per sample image (one per class first), original then augmented copies."""
    from ..plots import plot_image_grid

    picks = train.groupby("label_idx", sort=True).head(1).head(params.augment.preview_images)
    n_cols = max(params.augment.copies, 4)
    rows = []
    for row in picks.itertuples(index=False):
        pixels = read_rgb(paths.resolve(row.path))
        copies = [augment_image(pixels, params.augment.policy, copy_seed(params.seed, row.item_id, c))
                  for c in range(n_cols)]
        rows.append((row.label, [pixels, *copies]))
    plot_image_grid(rows, ["original"] + [f"aug {c}" for c in range(n_cols)], paths.augment_preview)
