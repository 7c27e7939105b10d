"""Stage augment: an albumentations policy from params.yaml, used two ways.

- offline: K augmented copies of every real training image, written with their own manifest and
  featurized like any image (content-addressed: unchanged copies are never re-featurized);
- online: the same policy on the fly in the fine-tuning data loader (``make_policy``).

A preview grid (original | K augmented copies) shows what the policy does to the labels.
"""

from __future__ import annotations

import pandas as pd

from .. import atomic
from ..augmentation import augment_image, copy_seed
from ..config import Params, Paths
from ..dataset import MANIFEST_COLUMNS, load_manifest
from ..images import image_id, read_rgb


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


def preview(train: pd.DataFrame, params: Params, paths: Paths) -> None:
    """Grid PNG: one row per sample image (one per class first), original then augmented copies."""
    from ..plots import plot_image_grid

    picks = train.groupby("label_idx", sort=True).head(1).head(params.augment.preview_images)
    n_cols = max(params.augment.copies, 4)
    rows = []
    for row in picks.itertuples(index=False):
        pixels = read_rgb(paths.resolve(row.path))
        copies = [augment_image(pixels, params.augment.policy, copy_seed(params.seed, row.image_id, c))
                  for c in range(n_cols)]
        rows.append((row.label, [pixels, *copies]))
    plot_image_grid(rows, ["original"] + [f"aug {c}" for c in range(n_cols)], paths.augment_preview)
