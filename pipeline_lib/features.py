"""Features: the content-addressed cache in front of an encoder, and the feature files featurize
writes (one npz per split; several backbones side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .encoder import Encoder
from .errors import PipelineError
from .feature_cache import FeatureCache
from .paths import Paths
from .runtime import chunks

FLIP = "|hflip"  # cache key suffix of an image's mirror-image features (flip TTA)


def array_suffix(name: str, names: list[str]) -> str:
    """Array-name suffix of a backbone's features in the npz files: none for the first."""
    return "" if name == names[0] else f"@{name}"


def _array(npz, base: str, backbone: str | None) -> str | None:
    names = list(npz["backbones"]) if "backbones" in npz.files else []
    key = base if backbone is None or not names else base + array_suffix(backbone, names)
    if backbone is not None and names and backbone not in names:
        raise PipelineError(f"no {backbone} features in the feature files (featurized: {names}): run `dvc repro featurize`")
    return key if key in npz.files else None


def load_features(paths: Paths, split: str, backbone: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, item ids) of a split; ``backbone``: whose features (default: the first).
    Feature files written before items had a neutral name keep their ids under ``image_id``."""
    with np.load(paths.features(split), allow_pickle=False) as npz:
        return npz[_array(npz, "X", backbone)], npz["y"], npz["item_id" if "item_id" in npz.files else "image_id"]


def load_flipped(paths: Paths, split: str, backbone: str | None = None) -> np.ndarray | None:
    """Features of the split's mirror images (row order as load_features), None without flip TTA."""
    with np.load(paths.features(split), allow_pickle=False) as npz:
        key = _array(npz, "X_flip", backbone)
        return npz[key] if key else None


def featurized_backbones(paths: Paths) -> list[str]:
    with np.load(paths.features("train"), allow_pickle=False) as npz:
        return list(npz["backbones"])


def feature_cache(params, paths: Paths, encoder_key: str) -> FeatureCache:
    """The content-addressed cache of an encoder's vectors (featurize.cache_dir, cache_shard_items)."""
    return FeatureCache(paths.cache_dir(params), encoder_key, params.featurize.cache_shard_items)


def cached_embeddings(cache: FeatureCache, backbone: Encoder, items: Sequence[tuple[str, str | Path, bool]],
                      batch_size: int, device, desc: str = "featurize") -> tuple[dict[str, np.ndarray], int]:
    """Vectors for (cache key, image path, mirrored) items: from the content-addressed cache where
    present, else computed by the backbone (plain images first, then mirrored ones) and stored, a
    shard at a time (what an interruption keeps). Returns ({key: vector}, how many were computed).
    The one cache-then-embed path of the project."""
    vectors: dict[str, np.ndarray | None] = {}
    todo: list[tuple[str, str | Path, bool]] = []
    for key, path, flip in items:
        if key not in vectors:
            vectors[key] = cache.get(key, backbone.feature_dim)
            if vectors[key] is None:
                todo.append((key, path, flip))
    for flip in (False, True):
        part = [(key, path) for key, path, f in todo if f == flip]
        shards = chunks(part, cache.shard_items)
        for n, shard in enumerate(shards, 1):
            # mirrored items exist only for an encoder with mirror images (images: flip TTA)
            embed = backbone.embed_mirrored if flip else backbone.embed
            feats = embed([path for _, path in shard], batch_size, device,
                          desc=f"{desc} {backbone.name}" + (" (mirrored)" if flip else "")
                          + (f" {n}/{len(shards)}" if len(shards) > 1 else ""))
            for (key, _), vec in zip(shard, feats):
                cache.put(key, vec)
                vectors[key] = vec
            cache.flush()
    return vectors, len(todo)


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (cosine similarity becomes a dot product)."""
    return X / np.linalg.norm(X, axis=1, keepdims=True).clip(1e-12)


def similar_pairs(A: np.ndarray, B: np.ndarray, threshold: float, keep=None, chunk: int = 1024
                  ) -> list[tuple[int, int, float]]:
    """Pairs (i in A, j in B) whose features' cosine similarity exceeds ``threshold``, most similar
    first, a block of A's rows at a time (memory chunk x len(B), never len(A) x len(B));
    ``keep(rows, sim_block)`` may narrow each block's candidate mask."""
    Za, Zb = unit_rows(np.asarray(A, np.float32)), unit_rows(np.asarray(B, np.float32))
    pairs = []
    for start in range(0, len(Za), chunk):
        sim = Za[start:start + chunk] @ Zb.T
        rows = np.arange(start, min(start + chunk, len(Za)))
        mask = sim > threshold
        if keep is not None:
            mask &= keep(rows, sim)
        i, j = np.nonzero(mask)
        pairs += [(int(rows[a]), int(b), float(sim[a, b])) for a, b in zip(i, j)]
    return sorted(pairs, key=lambda t: -t[2])


def nearest_class_mean(X_ref: np.ndarray, y_ref: np.ndarray, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Nearest class mean (cosine) of reference features (evaluate's synthetic-only baseline: the
    classifier a model trained purely on generated data amounts to): the predicted class per row
    of X; classes without reference images are never predicted."""
    means = np.full((n_classes, X_ref.shape[1]), np.nan, dtype=np.float64)
    for c in range(n_classes):
        if (y_ref == c).any():
            means[c] = unit_rows(X_ref[y_ref == c]).mean(0)
    sims = unit_rows(X) @ np.nan_to_num(unit_rows(np.nan_to_num(means)), nan=0.0).T
    sims[:, np.isnan(means).any(1)] = -np.inf
    return sims.argmax(1)
