"""What the stages hand each other about images or texts: the manifests (prepared, augmented, synthetic),
their columns and the split names. Shared by every stage; imports no stage."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from .errors import PipelineError
from .paths import Paths

SPLITS = ("train", "val", "test")
UNLABELED = "unlabeled"  # split of the images under data.unlabeled (semi_supervised.source: folder)
SYNTHETIC = "synthetic"  # generated training images (stage synthesize)
AUGMENTED = "train_augmented"  # features of the offline augmented copies of the train images
MANIFEST_COLUMNS = ["item_id", "path", "source", "label", "label_idx", "split", "height", "width",
                    "orig_mode", "note"]
PROVENANCE_COLUMNS = ["generator", "prompt", "seed", "model_hash", "confidence", "kept", "dropped_because"]


def read_manifest(path) -> pd.DataFrame:
    """A manifest parquet; one written before items had a neutral name (``image_id``) is read with
    its id column renamed ``item_id``."""
    frame = pd.read_parquet(path)
    return frame.rename(columns={"image_id": "item_id"}) if "image_id" in frame.columns else frame


def load_manifest(paths: Paths) -> tuple[pd.DataFrame, list[str]]:
    if not paths.manifest.exists():
        raise PipelineError(f"{paths.manifest} not found: run the ingest stage first (dvc repro ingest).")
    return read_manifest(paths.manifest), json.loads((paths.prepared_dir / "classes.json").read_text())


def load_augmented(paths: Paths) -> pd.DataFrame:
    if not paths.augmented_manifest.exists():
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    return read_manifest(paths.augmented_manifest)


def unlabeled_pool(manifest: pd.DataFrame, params) -> pd.DataFrame:
    """The unlabelled items featurize embeds (as split UNLABELED): semi_supervised.source's; else,
    for advise, the data.unlabeled items or, without any, the pool beyond shots_per_class (its
    labels hidden from training: what a simulation of labelling needs)."""
    source = params.semi_supervised.source
    if source == "none":
        if not params.advise.enabled:
            return manifest.iloc[:0]
        source = "folder" if (manifest["split"] == UNLABELED).any() else "unused"
    return manifest[manifest["split"] == ("unused" if source == "unused" else UNLABELED)].assign(split=UNLABELED)


def derived_from_labels(synthetic: pd.DataFrame, params) -> np.ndarray:
    """Which synthetic rows were made from the labelled images themselves (a DDPM trained on them,
    Stable Diffusion img2img variations of them): in a CV fold they would carry the held-out
    images into training, so folds leave them out; the refit on every label keeps them."""
    generator = synthetic["generator"].astype(str) if "generator" in synthetic else pd.Series("", index=synthetic.index)
    img2img = params.synthetic.stable_diffusion.img2img_strength > 0
    return ((generator == "ddpm") | ((generator == "stable_diffusion") & img2img)).to_numpy()


def load_synthetic(paths: Paths, kept_only: bool = True) -> pd.DataFrame:
    """The synthetic images' manifest (only those used for training, by default)."""
    if not paths.synthetic_manifest.exists():
        return pd.DataFrame(columns=MANIFEST_COLUMNS + PROVENANCE_COLUMNS)
    frame = read_manifest(paths.synthetic_manifest)
    return frame[frame["kept"].astype(bool)].reset_index(drop=True) if kept_only else frame


def copy_seed(seed: int, source_id: str, copy: int) -> int:
    """A stable seed per (image, copy): the same copy is produced whatever else changes."""
    digest = hashlib.sha256(f"{seed}|{source_id}|{copy}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
