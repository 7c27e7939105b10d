"""Stage featurize: frozen pretrained backbone -> one feature vector per image, via the cache.

Only images whose vectors are not in the content-addressed cache go through the network; the
DVC outputs are the feature matrices of the train, val and test splits.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic
from ..backbones import Backbone, backbone_for
from ..config import Params, Paths
from ..dataset import AUGMENTED, SPLITS, SYNTHETIC, UNLABELED, load_augmented, load_manifest, load_synthetic
from ..feature_cache import FeatureCache
from ..features import FLIP, array_suffix, cached_embeddings
from ..runtime import pick_device, use


def all_images(paths: Paths, params: Params | None = None) -> pd.DataFrame:
    """Every image featurize embeds: train/val/test, the augmented copies, the synthetic images and,
    with semi_supervised.source set, the unlabelled images (split UNLABELED)."""
    manifest, _ = load_manifest(paths)
    augmented = load_augmented(paths).assign(split=AUGMENTED)
    synthetic = load_synthetic(paths)[augmented.columns].assign(split=SYNTHETIC)
    parts = [manifest[manifest["split"].isin(SPLITS)], augmented, synthetic]
    source = params.semi_supervised.source if params is not None else "none"
    if source != "none":  # the pool beyond shots_per_class (labels hidden), or data.unlabeled
        parts.append(manifest[manifest["split"] == ("unused" if source == "unused" else UNLABELED)]
                     .assign(split=UNLABELED))
    return pd.concat(parts, ignore_index=True)


def feature_keys(params: Params, manifest: pd.DataFrame) -> list[tuple[str, str, bool]]:
    """(cache key, image path, mirrored) of every vector featurize needs: each image's, and with
    flip TTA the mirror image's of every train/val/test image."""
    keys = [(iid, rel, False) for iid, rel in zip(manifest["image_id"], manifest["path"])]
    if params.evaluate.tta == "hflip":
        keys += [(iid + FLIP, rel, True) for iid, rel, split in
                 zip(manifest["image_id"], manifest["path"], manifest["split"]) if split in SPLITS]
    return keys


def plan_shards(params: Params, paths: Paths, shard_size: int) -> list[list[tuple[str, str, bool, str]]]:
    """The vectors not cached yet, as (cache key, image path, mirrored, backbone) shards for workers."""
    todo = []
    for name in params.backbone.names:
        backbone = backbone_for(params, paths.root, name)
        cache = FeatureCache(paths.cache_dir(params), backbone.key)
        seen = set()
        for key, rel, flip in feature_keys(params, all_images(paths, params)):
            if key not in seen and cache.get(key, backbone.feature_dim) is None:
                todo.append((str(key), str(paths.resolve(rel)), flip, name))
            seen.add(key)
    return [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]


@lru_cache(maxsize=4)
def _worker_backbone(params_json: str, root: str, name: str) -> Backbone:
    from ..config import parse_params

    params = parse_params(json.loads(params_json))
    return backbone_for(params, Path(root), name).to(pick_device(params.runtime.device))


def embed_shard(params: Params, paths: Paths, shard: list[tuple[str, str, bool, str]]) -> int:
    """Embed one shard into the content-addressed cache (on whichever process runs it); returns
    how many vectors it wrote. Each backbone is loaded once per worker process."""
    params_json = json.dumps(params.model_dump(), sort_keys=True)
    for name in dict.fromkeys(item[3] for item in shard):
        backbone = _worker_backbone(params_json, str(paths.root), name)
        cached_embeddings(FeatureCache(paths.cache_dir(params), backbone.key), backbone,
                          [tuple(item[:3]) for item in shard if item[3] == name], params.featurize.batch_size,
                          pick_device(params.runtime.device))
    return len(shard)


def _vectors(params: Params, paths: Paths, manifest: pd.DataFrame, backbone: Backbone, device) -> tuple[dict, dict]:
    """Every vector featurize needs for one backbone, from the cache or computed; and a report."""
    cache = FeatureCache(paths.cache_dir(params), backbone.key)
    started = time.perf_counter()
    items = [(key, paths.resolve(rel), flip) for key, rel, flip in feature_keys(params, manifest)]
    vectors, computed = cached_embeddings(cache, backbone, items, params.featurize.batch_size, device)
    seconds = time.perf_counter() - started
    return vectors, {
        "backbone_key": backbone.key, "weights_sha256": backbone.weights.sha256, "feature_dim": backbone.feature_dim,
        "images": len(vectors), "mirrored": sum(k.endswith(FLIP) for k in vectors), "cache_hits": cache.hits,
        "computed": computed, "seconds": round(seconds, 3),
        "images_per_second": round(computed / seconds, 1) if computed and seconds > 0 else None}


def run(params: Params, paths: Paths, computed_by_workers: int = 0) -> dict:
    _, classes = load_manifest(paths)
    manifest = all_images(paths, params)
    device = use(params.runtime)
    names = params.backbone.names
    flip_splits = SPLITS if params.evaluate.tta == "hflip" else ()
    arrays: dict[str, dict[str, np.ndarray]] = {split: {} for split in (*SPLITS, AUGMENTED, SYNTHETIC, UNLABELED)}
    per_backbone = {}
    for name in names:
        backbone = backbone_for(params, paths.root, name).to(device)
        vectors, per_backbone[name] = _vectors(params, paths, manifest, backbone, device)
        empty = np.zeros((0, backbone.feature_dim), np.float32)
        for split, out in arrays.items():
            ids = manifest.loc[manifest["split"] == split, "image_id"]
            out["X" + array_suffix(name, names)] = np.stack([vectors[i] for i in ids]).astype(np.float32) if len(ids) else empty
            if split in flip_splits:
                out["X_flip" + array_suffix(name, names)] = (np.stack([vectors[i + FLIP] for i in ids]).astype(np.float32)
                                                        if len(ids) else empty)
        del backbone
    for split, out in arrays.items():
        part = manifest[manifest["split"] == split]
        atomic.write_npz(paths.features(split), y=part["label_idx"].to_numpy(np.int64),
                         image_id=part["image_id"].to_numpy(dtype=str), backbones=np.array(names), **out)
    first = per_backbone[names[0]]
    report = {"backbone": names[0], **first, "device": str(device),
              "images": sum(r["images"] for r in per_backbone.values()),
              "cache_hits": sum(r["cache_hits"] for r in per_backbone.values()),
              "computed": sum(r["computed"] for r in per_backbone.values()),
              "computed_by_workers": computed_by_workers,
              "seconds": round(sum(r["seconds"] for r in per_backbone.values()), 3),
              "backbones": per_backbone, "classes": classes}
    atomic.write_json(paths.featurize_report, report)
    return report


