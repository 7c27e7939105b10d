"""Stage featurize: frozen pretrained backbone -> one feature vector per image, via the cache.

Only images whose vectors are not in the content-addressed cache go through the network; the
DVC outputs are the feature matrices of the train, val and test splits.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from functools import lru_cache
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from . import atomic
from .backbones import Backbone, backbone_for, pick_device
from .config import Params, Paths
from .feature_cache import FeatureCache
from .augment import load_augmented
from .ingest import SPLITS, load_manifest
from .synthesize import SPLIT as SYNTHETIC, load_synthetic

AUGMENTED = "train_augmented"  # features of the offline augmented copies of the train images


def read_image_uint8(path: str | Path) -> torch.Tensor:
    """A prepared (RGB PNG) image as a uint8 (3, H, W) tensor."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def read_image_tensor(path: str | Path) -> torch.Tensor:
    """A prepared (RGB PNG) image as a float (3, H, W) tensor in [0, 1]: the model's input scale."""
    return read_image_uint8(path).float().div_(255.0)


def load_batch(paths: Sequence[str | Path], preprocess) -> torch.Tensor:
    """Decode a batch of images to a float (N, 3, R, R) tensor in [0, 1] at the model resolution.

    Images of one size (the common case) are resized in one batched call; mixed sizes one by one.
    Either way each image gets the identical resize.
    """
    images = [read_image_uint8(p) for p in paths]
    if len({tuple(im.shape) for im in images}) == 1:
        return preprocess.resize(torch.stack(images).float().div_(255.0))
    return torch.stack([preprocess.resize(im.float().div_(255.0)) for im in images])


def _prefetch(batches: Iterable, load, depth: int = 2) -> Iterator:
    """Decode the next batches in a background thread while the current one runs."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(load, batch))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def embed_paths(backbone: Backbone, paths: Sequence[str | Path], batch_size: int,
                device: torch.device, desc: str = "featurize") -> np.ndarray:
    """Run the frozen backbone over image files, batched, with a progress bar."""
    def load(batch: Sequence) -> torch.Tensor:
        return load_batch(batch, backbone.preprocess)

    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    out = np.zeros((len(paths), backbone.feature_dim), dtype=np.float32)
    done = 0
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not paths) as bar:
        for images in _prefetch(chunks, load):
            feats = backbone(images.to(device, non_blocking=True)).float().cpu().numpy()
            out[done:done + len(feats)] = feats
            done += len(feats)
            bar.update(len(feats))
    return out


def configure_threads(num_threads: int) -> None:
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


def all_images(paths: Paths) -> pd.DataFrame:
    """Every image featurize embeds: train/val/test, the augmented copies and the synthetic images."""
    manifest, _ = load_manifest(paths)
    augmented = load_augmented(paths).assign(split=AUGMENTED)
    synthetic = load_synthetic(paths)[augmented.columns].assign(split=SYNTHETIC)
    return pd.concat([manifest[manifest["split"].isin(SPLITS)], augmented, synthetic], ignore_index=True)


def plan_shards(params: Params, paths: Paths, shard_size: int) -> list[list[tuple[str, str]]]:
    """The images whose features are not cached yet, as (image id, path) shards for workers."""
    backbone = backbone_for(params, paths.root)
    cache = FeatureCache(paths.cache_dir(params), backbone.key)
    todo, seen = [], set()
    for iid, rel in zip(*all_images(paths)[["image_id", "path"]].to_numpy().T):
        if iid not in seen and not _cached(cache, iid, backbone.feature_dim):
            todo.append((str(iid), str(paths.resolve(rel))))
        seen.add(iid)
    return [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]


def _cached(cache: FeatureCache, iid: str, dim: int) -> bool:
    vec = cache.get(iid)
    return vec is not None and vec.shape == (dim,)


@lru_cache(maxsize=2)
def _worker_backbone(params_json: str, root: str) -> Backbone:
    from .config import parse_params

    params = parse_params(json.loads(params_json))
    return backbone_for(params, Path(root)).to(pick_device(params.featurize.device))


def embed_shard(params: Params, paths: Paths, shard: list[tuple[str, str]]) -> int:
    """Embed one shard into the content-addressed cache (on whichever process runs it); returns
    how many vectors it wrote. The backbone is loaded once per worker process."""
    backbone = _worker_backbone(json.dumps(params.model_dump(), sort_keys=True), str(paths.root))
    cache = FeatureCache(paths.cache_dir(params), backbone.key)
    feats = embed_paths(backbone, [path for _, path in shard], params.featurize.batch_size,
                        pick_device(params.featurize.device), desc="featurize shard")
    for (iid, _), vec in zip(shard, feats):
        cache.put(iid, vec)
    return len(shard)


def run(params: Params, paths: Paths, computed_by_workers: int = 0) -> dict:
    p = params.featurize
    configure_threads(p.num_threads)
    _, classes = load_manifest(paths)
    manifest = all_images(paths)
    device = pick_device(p.device)
    backbone = backbone_for(params, paths.root).to(device)
    cache = FeatureCache(paths.cache_dir(params), backbone.key)

    started = time.perf_counter()
    vectors: dict[str, np.ndarray] = {}
    todo: list[tuple[str, str]] = []
    for iid, rel in zip(manifest["image_id"], manifest["path"]):
        if iid in vectors:
            continue
        vec = cache.get(iid)
        if vec is None or vec.shape != (backbone.feature_dim,):
            todo.append((iid, rel))
        else:
            vectors[iid] = vec
    if todo:
        feats = embed_paths(backbone, [paths.resolve(rel) for _, rel in todo], p.batch_size, device)
        for (iid, _), vec in zip(todo, feats):
            cache.put(iid, vec)
            vectors[iid] = vec
    compute_s = time.perf_counter() - started

    for split in (*SPLITS, AUGMENTED, SYNTHETIC):
        part = manifest[manifest["split"] == split]
        X = np.stack([vectors[i] for i in part["image_id"]]) if len(part) else \
            np.zeros((0, backbone.feature_dim), np.float32)
        atomic.write_npz(paths.features(split), X=X.astype(np.float32),
                         y=part["label_idx"].to_numpy(np.int64),
                         image_id=part["image_id"].to_numpy(dtype=str))
    report = {
        "backbone": params.backbone.name, "backbone_key": backbone.key,
        "weights_sha256": backbone.weights.sha256, "feature_dim": backbone.feature_dim,
        "device": str(device), "images": len(manifest), "cache_hits": cache.hits,
        "computed": len(todo), "computed_by_workers": computed_by_workers, "seconds": round(compute_s, 3),
        "images_per_second": round(len(todo) / compute_s, 1) if todo and compute_s > 0 else None,
        "classes": classes,
    }
    atomic.write_json(paths.featurize_report, report)
    return report


def load_features(paths: Paths, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(paths.features(split), allow_pickle=False) as npz:
        return npz["X"], npz["y"], npz["image_id"]
