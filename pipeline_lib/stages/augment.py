"""Stage augment: the augmentation policy from params.yaml (albumentations for images,
augment.text's noise for texts), used two ways.

- offline: K augmented copies of every real training item, written with their own manifest and
  featurized like any item (content-addressed: unchanged copies are never re-featurized);
- online: the same policy on the fly in the fine-tuning data loader (``make_policy``).

A preview (original | augmented copies: an image grid, or a table of texts) shows what the policy
does to the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from .. import atomic
from ..config import Params
from ..dataset import MANIFEST_COLUMNS, copy_seed, is_text, load_manifest
from ..image.augmentation import augment_image
from ..image.files import image_id, read_rgb
from ..paths import Paths
from ..text.augmentation import augment_text
from ..text.files import read_text, text_id


@dataclass(frozen=True)
class _Kind:
    """How augment handles one modality's items: where they go, how they are read, changed, named."""

    folder: str
    suffix: str
    mode: str
    read: Callable
    write: Callable
    content_id: Callable
    augment: Callable  # (item, seed) -> augmented item
    size: Callable  # item -> (height, width) for the manifest


def _kind(params: Params, text: bool) -> _Kind:
    if text:
        return _Kind("texts", ".txt", "text", read_text, atomic.write_text, text_id,
                     lambda item, seed: augment_text(item, params.augment.text, seed), lambda item: (0, 0))
    return _Kind("images", ".png", "RGB", read_rgb, atomic.write_png, image_id,
                 lambda item, seed: augment_image(item, params.augment.policy, seed), lambda item: item.shape[:2])


def run(params: Params, paths: Paths) -> dict:
    manifest, classes = load_manifest(paths)
    train = manifest[manifest["split"] == "train"]
    text = is_text(manifest)
    kind = _kind(params, text)
    k = params.augment.copies
    rows = []
    with atomic.replace_dir(paths.augmented_dir) as staging:
        (staging / kind.folder).mkdir()
        for row in train.itertuples(index=False):
            item = kind.read(paths.resolve(row.path))
            for c in range(k):
                out = kind.augment(item, copy_seed(params.seed, row.image_id, c))
                iid = kind.content_id(out)
                if iid == row.image_id:  # no transform fired: the real item is already in train
                    continue
                kind.write(staging / kind.folder / f"{iid}{kind.suffix}", out)
                height, width = kind.size(out)
                rows.append({"image_id": iid, "path": f"data/augmented/{kind.folder}/{iid}{kind.suffix}",
                             "source": f"augment:{row.image_id}#{c}", "label": row.label,
                             "label_idx": row.label_idx, "split": "train", "height": height,
                             "width": width, "orig_mode": kind.mode, "note": f"copy {c} of {row.image_id}"})
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).drop_duplicates("image_id")
        atomic.write_parquet(staging / "manifest.parquet", frame)
    (text_preview if text else preview)(train, params, paths)
    report = {"copies_per_image": k, "real_train_images": int(len(train)), "augmented_images": int(len(frame)),
              "identical_copies_dropped": int(k * len(train) - len(frame)), "modality": "text" if text else "image"}
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


def text_preview(train: pd.DataFrame, params: Params, paths: Paths) -> None:
    """Table PNG: one row per sample text (one per class first), the original then noisy copies."""
    from ..plots import plot_text_table

    picks = train.groupby("label_idx", sort=True).head(1).head(params.augment.preview_images)
    rows = []
    for row in picks.itertuples(index=False):
        text = read_text(paths.resolve(row.path))
        rows.append((row.label, [text] + [augment_text(text, params.augment.text, copy_seed(params.seed, row.image_id, c))
                                          for c in range(2)]))
    plot_text_table(rows, ["original", "noisy copy 1", "noisy copy 2"], paths.augment_preview)
