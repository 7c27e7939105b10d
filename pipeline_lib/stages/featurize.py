"""Stage featurize: frozen pretrained encoder -> one feature vector per item, via the cache.

Only items whose vectors are not in the content-addressed cache go through the network; the
DVC outputs are the feature matrices of the train, val and test splits (and of the augmented,
synthetic and unlabelled items). The encoders are the modality's (pipeline_lib.modalities: images
go through backbone.name's backbones, texts through text.encoder).
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic, modalities
from ..config import Params
from ..dataset import AUGMENTED, SPLITS, SYNTHETIC, UNLABELED, load_augmented, load_manifest, load_synthetic, unlabeled_pool
from ..encoder import Encoder
from ..features import FLIP, array_suffix, cached_embeddings, feature_cache
from ..modality import Modality
from ..paths import Paths
from ..runtime import chunks, loader_workers, pick_device, use


def all_items(paths: Paths, params: Params | None = None) -> pd.DataFrame:
    """Every image featurize embeds: train/val/test, the augmented copies, the synthetic images and
    the unlabelled ones (split UNLABELED: dataset.unlabeled_pool)."""
    manifest, _ = load_manifest(paths)
    augmented = load_augmented(paths).assign(split=AUGMENTED)
    synthetic = load_synthetic(paths)[augmented.columns].assign(split=SYNTHETIC)
    parts = [manifest[manifest["split"].isin(SPLITS)], augmented, synthetic]
    if params is not None:
        parts.append(unlabeled_pool(manifest, params))
    return pd.concat(parts, ignore_index=True)


def feature_keys(params: Params, manifest: pd.DataFrame, modality: Modality) -> list[tuple[str, str, bool]]:
    """(cache key, path, mirrored) of every vector featurize needs: each item's, and with flip TTA
    (a modality with mirror images) the mirror image's of every train/val/test item."""
    keys = [(iid, rel, False) for iid, rel in zip(manifest["item_id"], manifest["path"])]
    if flips(params, modality):
        keys += [(iid + FLIP, rel, True) for iid, rel, split in
                 zip(manifest["item_id"], manifest["path"], manifest["split"]) if split in SPLITS]
    return keys


def flips(params: Params, modality: Modality) -> bool:
    """Mirror images' vectors are needed: flip TTA on, and a modality with mirror images."""
    return params.evaluate.tta == "hflip" and modality.mirror_tta


def plan_shards(params: Params, paths: Paths, shard_size: int) -> list[list[tuple[str, str, bool, str]]]:
    """The vectors not cached yet, as (cache key, image path, mirrored, backbone) shards for workers."""
    todo = []
    manifest = all_items(paths, params)
    modality = modalities.of_dataset(paths)
    for name in modality.encoder_names(params):
        backbone = modality.load_encoder(params, paths.root, name)
        cache = feature_cache(params, paths, backbone.key)
        seen = set()
        for key, rel, flip in feature_keys(params, manifest, modality):
            if key not in seen and cache.get(key, backbone.feature_dim) is None:
                todo.append((str(key), str(paths.resolve(rel)), flip, name))
            seen.add(key)
    return chunks(todo, shard_size)


@lru_cache(maxsize=4)
def _worker_backbone(params_json: str, root: str, name: str) -> Encoder:
    from ..config import parse_params
    from ..paths import Paths

    params = parse_params(json.loads(params_json))
    modality = modalities.of_dataset(Paths(Path(root)))
    # the stage's own precision, or the cache keys would differ; no DataLoader processes in a Dask
    # worker (the cluster is the parallelism, and its worker processes may not start children)
    return modality.load_encoder(params, Path(root), name).to(pick_device(params.runtime.device),
                                                              params.runtime.precision)


def embed_shard(params: Params, paths: Paths, shard: list[tuple[str, str, bool, str]]) -> int:
    """Embed one shard into the content-addressed cache (on whichever process runs it); returns
    how many vectors it wrote. Each backbone is loaded once per worker process."""
    params_json = json.dumps(params.model_dump(), sort_keys=True)
    for name in dict.fromkeys(item[3] for item in shard):
        backbone = _worker_backbone(params_json, str(paths.root), name)
        cached_embeddings(feature_cache(params, paths, backbone.key), backbone,
                          [tuple(item[:3]) for item in shard if item[3] == name], params.featurize.batch_size,
                          pick_device(params.runtime.device))
    return len(shard)


def _vectors(params: Params, paths: Paths, manifest: pd.DataFrame, modality: Modality, backbone: Encoder,
             device) -> tuple[dict, dict]:
    """Every vector featurize needs for one encoder, from the cache or computed; and a report."""
    cache = feature_cache(params, paths, backbone.key)
    started = time.perf_counter()
    items = [(key, paths.resolve(rel), flip) for key, rel, flip in feature_keys(params, manifest, modality)]
    vectors, computed = cached_embeddings(cache, backbone, items, params.featurize.batch_size, device)
    seconds = time.perf_counter() - started
    report = {
        "backbone_key": backbone.key, "weights_sha256": backbone.weights_sha256, "feature_dim": backbone.feature_dim,
        "items": len(vectors), "mirrored": sum(k.endswith(FLIP) for k in vectors), "cache_hits": cache.hits,
        "computed": computed, "seconds": round(seconds, 3),
        "items_per_second": round(computed / seconds, 1) if computed and seconds > 0 else None}
    report.update(modality.feature_notes(backbone, [path for _, path, flip in items if not flip]))
    return vectors, report


def run(params: Params, paths: Paths, computed_by_workers: int = 0) -> dict:
    _, classes = load_manifest(paths)
    manifest = all_items(paths, params)
    device = use(params.runtime)
    modality = modalities.of_dataset(paths)
    names = modality.encoder_names(params)
    flip_splits = SPLITS if flips(params, modality) else ()
    arrays: dict[str, dict[str, np.ndarray]] = {split: {} for split in (*SPLITS, AUGMENTED, SYNTHETIC, UNLABELED)}
    per_backbone = {}
    for name in names:
        backbone = modality.load_encoder(params, paths.root, name).to(device, params.runtime.precision)
        if hasattr(backbone, "workers"):  # an encoder that decodes files (images) in DataLoader processes
            backbone.workers = loader_workers(params.runtime.loader_workers, device)
        vectors, per_backbone[name] = _vectors(params, paths, manifest, modality, backbone, device)
        empty = np.zeros((0, backbone.feature_dim), np.float32)
        for split, out in arrays.items():
            ids = manifest.loc[manifest["split"] == split, "item_id"]
            out["X" + array_suffix(name, names)] = np.stack([vectors[i] for i in ids]).astype(np.float32) if len(ids) else empty
            if split in flip_splits:
                out["X_flip" + array_suffix(name, names)] = (np.stack([vectors[i + FLIP] for i in ids]).astype(np.float32)
                                                        if len(ids) else empty)
        del backbone
    for split, out in arrays.items():
        part = manifest[manifest["split"] == split]
        atomic.write_npz(paths.features(split), y=part["label_idx"].to_numpy(np.int64),
                         item_id=part["item_id"].to_numpy(dtype=str), backbones=np.array(names), **out)
    first = per_backbone[names[0]]
    leaks = near_duplicate_leaks(params, manifest, arrays, "X" + array_suffix(names[0], names))
    report = {"backbone": names[0], "modality": modality.name, **first, "device": str(device),
              "items": sum(r["items"] for r in per_backbone.values()),
              "cache_hits": sum(r["cache_hits"] for r in per_backbone.values()),
              "computed": sum(r["computed"] for r in per_backbone.values()),
              "computed_by_workers": computed_by_workers,
              "seconds": round(sum(r["seconds"] for r in per_backbone.values()), 3),
              "backbones": per_backbone, "classes": classes, **leaks}
    atomic.write_json(paths.featurize_report, report)
    return report


def near_duplicate_leaks(params: Params, manifest: pd.DataFrame, arrays: dict, key: str, listed: int = 50) -> dict:
    """Test items nearly identical to a labelled one (cosine similarity of the first encoder's
    features above featurize.leak_similarity): each test item with its most similar labelled item,
    most similar first. Exact copies are ingest's (reports/ingest.json); these are the rest."""
    from ..features import similar_pairs

    labelled = pd.concat([manifest[manifest["split"] == s] for s in ("train", "val")], ignore_index=True)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    X_lab = np.concatenate([arrays["train"][key], arrays["val"][key]])
    threshold = params.featurize.leak_similarity
    best: dict[int, tuple[int, float]] = {}
    for i, j, sim in similar_pairs(arrays["test"][key], X_lab, threshold):
        best.setdefault(i, (j, sim))  # most similar first: the first pair of a test item is its closest
    def where(frame, k):  # the user's original file where ingest recorded it, else the prepared copy
        source = frame.loc[k, "source"]
        return str(source) if isinstance(source, str) and source else str(frame.loc[k, "path"])

    pairs = [{"test": where(test, i), "labelled": where(labelled, j),
              "test_label": str(test.loc[i, "label"]), "labelled_label": str(labelled.loc[j, "label"]),
              "similarity": round(sim, 5)} for i, (j, sim) in sorted(best.items(), key=lambda t: -t[1][1])]
    return {"near_duplicate_leaks": len(pairs), "near_duplicate_threshold": threshold,
            "near_duplicate_pairs": pairs[:listed]}


