"""Stage augment: the modality's augmentation policy from params.yaml (albumentations for images,
augment.text's noise for texts; pipeline_lib.modalities), used two ways.

- offline: K augmented copies of every real training item, written with their own manifest and
  featurized like any item (content-addressed: unchanged copies are never re-featurized);
- online: the same policy on the fly in fine-tuning (the modality's runner).

A preview (original | augmented copies: an image grid, or a table of texts) shows what the policy
does to the labels.
"""

from __future__ import annotations

import pandas as pd

from .. import atomic, modalities
from ..config import Params
from ..dataset import MANIFEST_COLUMNS, copy_seed, load_manifest
from ..paths import Paths


def run(params: Params, paths: Paths) -> dict:
    manifest, classes = load_manifest(paths)
    train = manifest[manifest["split"] == "train"]
    modality = modalities.of_dataset(paths)
    k = params.augment.copies
    rows = []
    with atomic.replace_dir(paths.augmented_dir) as staging:
        (staging / modality.folder).mkdir()
        for row in train.itertuples(index=False):
            item = modality.read(paths.resolve(row.path))
            for c in range(k):
                out = modality.augment(item, params, copy_seed(params.seed, row.item_id, c))
                iid = modality.content_id(out)
                if iid == row.item_id:  # no transform fired: the real item is already in train
                    continue
                name = f"{modality.folder}/{iid}{modality.suffix}"
                modality.write(staging / name, out)
                rows.append({"item_id": iid, "path": f"data/augmented/{name}", "source": f"augment:{row.item_id}#{c}",
                             "label": row.label, "label_idx": row.label_idx, "split": "train",
                             **modality.fields(out), "note": f"copy {c} of {row.item_id}"})
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).drop_duplicates("item_id")
        atomic.write_parquet(staging / "manifest.parquet", frame)
    modality.augment_preview(train, params, paths)
    report = {"copies_per_image": k, "real_train_images": int(len(train)), "augmented_images": int(len(frame)),
              "identical_copies_dropped": int(k * len(train) - len(frame)), "modality": modality.name}
    atomic.write_json(paths.augment_report, report)
    return report
