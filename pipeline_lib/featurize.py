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
from .errors import PipelineError
from .feature_cache import FeatureCache
from .augment import load_augmented
from .ingest import SPLITS, UNLABELED, load_manifest
from .synthesize import SPLIT as SYNTHETIC, load_synthetic

AUGMENTED = "train_augmented"  # features of the offline augmented copies of the train images
FLIP = "|hflip"  # cache key suffix of an image's mirror-image features (flip TTA)


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
                device: torch.device, desc: str = "featurize", flip: bool = False) -> np.ndarray:
    """Run the frozen backbone over image files, batched, with a progress bar; ``flip``: over
    their mirror images (what flip test-time augmentation averages with)."""
    def load(batch: Sequence) -> torch.Tensor:
        return load_batch(batch, backbone.preprocess)

    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    out = np.zeros((len(paths), backbone.feature_dim), dtype=np.float32)
    done = 0
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not paths) as bar:
        for images in _prefetch(chunks, load):
            if flip:
                images = images.flip(-1)
            feats = backbone(images.to(device, non_blocking=True)).float().cpu().numpy()
            out[done:done + len(feats)] = feats
            done += len(feats)
            bar.update(len(feats))
    return out


def configure_threads(num_threads: int) -> None:
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


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
            if key not in seen and not _cached(cache, key, backbone.feature_dim):
                todo.append((str(key), str(paths.resolve(rel)), flip, name))
            seen.add(key)
    return [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]


def _cached(cache: FeatureCache, iid: str, dim: int) -> bool:
    vec = cache.get(iid)
    return vec is not None and vec.shape == (dim,)


@lru_cache(maxsize=4)
def _worker_backbone(params_json: str, root: str, name: str) -> Backbone:
    from .config import parse_params

    params = parse_params(json.loads(params_json))
    return backbone_for(params, Path(root), name).to(pick_device(params.featurize.device))


def embed_shard(params: Params, paths: Paths, shard: list[tuple[str, str, bool, str]]) -> int:
    """Embed one shard into the content-addressed cache (on whichever process runs it); returns
    how many vectors it wrote. Each backbone is loaded once per worker process."""
    params_json = json.dumps(params.model_dump(), sort_keys=True)
    for name in dict.fromkeys(item[3] for item in shard):
        backbone = _worker_backbone(params_json, str(paths.root), name)
        _embed_into(FeatureCache(paths.cache_dir(params), backbone.key), backbone,
                    [tuple(item[:3]) for item in shard if item[3] == name], params.featurize.batch_size,
                    pick_device(params.featurize.device), {})
    return len(shard)


def _embed_into(cache: FeatureCache, backbone: Backbone, todo: list[tuple[str, str, bool]], batch_size: int,
                device, vectors: dict) -> None:
    """Embed (key, path, mirrored) items, plain images first, into the cache and ``vectors``."""
    for flip in (False, True):
        part = [(key, path) for key, path, f in todo if f == flip]
        if part:
            feats = embed_paths(backbone, [path for _, path in part], batch_size, device,
                                desc=f"featurize {backbone.name}" + (" (mirrored)" if flip else ""), flip=flip)
            for (key, _), vec in zip(part, feats):
                cache.put(key, vec)
                vectors[key] = vec


def _vectors(params: Params, paths: Paths, manifest: pd.DataFrame, backbone: Backbone, device) -> tuple[dict, dict]:
    """Every vector featurize needs for one backbone, from the cache or computed; and a report."""
    cache = FeatureCache(paths.cache_dir(params), backbone.key)
    started = time.perf_counter()
    vectors: dict[str, np.ndarray] = {}
    todo: list[tuple[str, str, bool]] = []
    for key, rel, flip in feature_keys(params, manifest):
        if key in vectors:
            continue
        vec = cache.get(key)
        if vec is None or vec.shape != (backbone.feature_dim,):
            todo.append((key, paths.resolve(rel), flip))
        vectors[key] = vec
    _embed_into(cache, backbone, todo, params.featurize.batch_size, device, vectors)
    seconds = time.perf_counter() - started
    return vectors, {
        "backbone_key": backbone.key, "weights_sha256": backbone.weights.sha256, "feature_dim": backbone.feature_dim,
        "images": len(vectors), "mirrored": sum(k.endswith(FLIP) for k in vectors), "cache_hits": cache.hits,
        "computed": len(todo), "seconds": round(seconds, 3),
        "images_per_second": round(len(todo) / seconds, 1) if todo and seconds > 0 else None}


def _suffix(name: str, names: list[str]) -> str:
    """Array-name suffix of a backbone's features in the npz files: none for the first."""
    return "" if name == names[0] else f"@{name}"


def run(params: Params, paths: Paths, computed_by_workers: int = 0) -> dict:
    p = params.featurize
    configure_threads(p.num_threads)
    _, classes = load_manifest(paths)
    manifest = all_images(paths, params)
    device = pick_device(p.device)
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
            out["X" + _suffix(name, names)] = np.stack([vectors[i] for i in ids]).astype(np.float32) if len(ids) else empty
            if split in flip_splits:
                out["X_flip" + _suffix(name, names)] = (np.stack([vectors[i + FLIP] for i in ids]).astype(np.float32)
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


def _array(npz, base: str, backbone: str | None) -> str | None:
    names = list(npz["backbones"]) if "backbones" in npz.files else []
    key = base if backbone is None or not names else base + _suffix(backbone, names)
    if backbone is not None and names and backbone not in names:
        raise PipelineError(f"no {backbone} features in the feature files (featurized: {names}): run `dvc repro featurize`")
    return key if key in npz.files else None


def load_features(paths: Paths, split: str, backbone: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, image ids) of a split; ``backbone``: whose features (default: the first)."""
    with np.load(paths.features(split), allow_pickle=False) as npz:
        return npz[_array(npz, "X", backbone)], npz["y"], npz["image_id"]


def load_flipped(paths: Paths, split: str, backbone: str | None = None) -> np.ndarray | None:
    """Features of the split's mirror images (row order as load_features), None without flip TTA."""
    with np.load(paths.features(split), allow_pickle=False) as npz:
        key = _array(npz, "X_flip", backbone)
        return npz[key] if key else None


def featurized_backbones(paths: Paths) -> list[str]:
    with np.load(paths.features("train"), allow_pickle=False) as npz:
        return list(npz["backbones"])
