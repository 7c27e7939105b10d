"""Stage augment: an albumentations policy from params.yaml, used two ways.

- offline: K augmented copies of every real training image, written with their own manifest and
  featurized like any image (content-addressed: unchanged copies are never re-featurized);
- online: the same policy on the fly in the fine-tuning data loader (``make_policy``).

A preview grid (original | K augmented copies) shows what the policy does to the labels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import atomic
from .config import AugmentPolicy, Params, Paths
from .images import image_id
from .ingest import MANIFEST_COLUMNS, load_manifest


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


def copy_seed(seed: int, source_id: str, copy: int) -> int:
    """A stable seed per (image, copy): the same copy is produced whatever else changes."""
    digest = hashlib.sha256(f"{seed}|{source_id}|{copy}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def augment_image(pixels: np.ndarray, policy: AugmentPolicy, seed: int) -> np.ndarray:
    compose = make_policy(policy, pixels.shape[0], pixels.shape[1], seed=seed)
    return compose(image=pixels)["image"]


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def run(params: Params, paths: Paths) -> dict:
    manifest, classes = load_manifest(paths)
    train = manifest[manifest["split"] == "train"]
    k = params.augment.copies
    rows = []
    with atomic.replace_dir(paths.augmented_dir) as staging:
        (staging / "images").mkdir()
        for row in train.itertuples(index=False):
            pixels = read_rgb(paths.resolve(row.path))
            for c in range(k):
                out = augment_image(pixels, params.augment.policy, copy_seed(params.seed, row.image_id, c))
                iid = image_id(out)
                if iid == row.image_id:  # no transform fired: the real image is already in train
                    continue
                atomic.write_png(staging / "images" / f"{iid}.png", out)
                rows.append({"image_id": iid, "path": f"data/augmented/images/{iid}.png",
                             "source": f"augment:{row.image_id}#{c}", "label": row.label,
                             "label_idx": row.label_idx, "split": "train", "height": out.shape[0],
                             "width": out.shape[1], "orig_mode": "RGB", "note": f"copy {c} of {row.image_id}"})
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).drop_duplicates("image_id")
        atomic.write_parquet(staging / "manifest.parquet", frame)
    preview(train, params, paths)
    report = {"copies_per_image": k, "real_train_images": int(len(train)), "augmented_images": int(len(frame)),
              "identical_copies_dropped": int(k * len(train) - len(frame))}
    atomic.write_json(paths.augment_report, report)
    return report


def load_augmented(paths: Paths) -> pd.DataFrame:
    if not paths.augmented_manifest.exists():
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    return pd.read_parquet(paths.augmented_manifest)


def preview(train: pd.DataFrame, params: Params, paths: Paths) -> None:
    """Grid PNG: one row per sample image (one per class first), original then augmented copies."""
    from .plots import plot_image_grid

    picks = train.groupby("label_idx", sort=True).head(1).head(params.augment.preview_images)
    n_cols = max(params.augment.copies, 4)
    rows = []
    for row in picks.itertuples(index=False):
        pixels = read_rgb(paths.resolve(row.path))
        copies = [augment_image(pixels, params.augment.policy, copy_seed(params.seed, row.image_id, c))
                  for c in range(n_cols)]
        rows.append((row.label, [pixels, *copies]))
    plot_image_grid(rows, ["original"] + [f"aug {c}" for c in range(n_cols)], paths.augment_preview)
