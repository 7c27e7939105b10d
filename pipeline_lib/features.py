"""Image features: decoding batches, running a frozen backbone over files, and reading the
feature files featurize writes (one npz per split; several backbones side by side)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .backbones import Backbone
from .config import Paths
from .errors import PipelineError
from .feature_cache import FeatureCache

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


def cached_embeddings(cache: FeatureCache, backbone: Backbone, items: Sequence[tuple[str, str | Path, bool]],
                      batch_size: int, device, desc: str = "featurize") -> tuple[dict[str, np.ndarray], int]:
    """Vectors for (cache key, image path, mirrored) items: from the content-addressed cache where
    present, else computed by the backbone (plain images first, then mirrored ones) and stored.
    Returns ({key: vector}, how many were computed). The one cache-then-embed path of the project."""
    vectors: dict[str, np.ndarray | None] = {}
    todo: list[tuple[str, str | Path, bool]] = []
    for key, path, flip in items:
        if key not in vectors:
            vectors[key] = cache.get(key, backbone.feature_dim)
            if vectors[key] is None:
                todo.append((key, path, flip))
    for flip in (False, True):
        part = [(key, path) for key, path, f in todo if f == flip]
        if part:
            feats = embed_paths(backbone, [path for _, path in part], batch_size, device,
                                desc=f"{desc} {backbone.name}" + (" (mirrored)" if flip else ""), flip=flip)
            for (key, _), vec in zip(part, feats):
                cache.put(key, vec)
                vectors[key] = vec
    return vectors, len(todo)
