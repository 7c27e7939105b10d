"""Stage synthesize: generated training items for scarce classes, filtered and capped. The generators
are the modality's (pipeline_lib.modalities: diffusers for images, templates or a language model for
texts).

Runs after ingest (it learns from, and is filtered against, the real *training* images only) and
before augment. Writes ``data/synthetic/{images/, manifest.parquet}``; every row carries its
provenance (generator, prompt, seed, model hash) and whether it is used (``kept``) and why not.
Synthetic images only ever join the training set: val and test stay real (featurize and finetune
read them under the split name ``synthetic``).

Filtering (optional): a probe (the train_head recipe on the frozen backbone's features of the real
training images) scores each synthetic image; those below ``min_confidence`` for their intended
class are dropped; near-duplicates (cosine similarity of features above ``dedup_similarity``)
too. Then at most ``ratio`` x (real training images of the class) are kept, the most confident
first.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic, modalities
from ..config import Params
from ..dataset import MANIFEST_COLUMNS, PROVENANCE_COLUMNS, SYNTHETIC, load_manifest, load_synthetic
from ..errors import PipelineError
from ..heads import HeadRecipe, fit_head, predict_proba
from ..paths import Paths
from ..runtime import pick_device, use


def run(params: Params, paths: Paths) -> dict:
    s = params.synthetic
    manifest, classes = load_manifest(paths)
    train = manifest[manifest["split"] == "train"]
    modality = modalities.of_dataset(paths)
    _no_ddpm(paths, s.generator)  # models/ddpm is an output: a DDPM generator replaces this note with itself
    if s.generator == "none":
        _write_empty(paths)
        frame = load_synthetic(paths, kept_only=False)
        modality.synthetic_preview(frame, train, classes, params, paths)  # the real column only
        report = {"generator": "none", "modality": modality.name, "generated": 0, "kept": 0}
        atomic.write_json(paths.synthesize_report, report)
        return report
    if s.generator not in modality.generators:
        raise PipelineError(f"synthetic.generator: {s.generator} does not make {modality.nouns}, and this is a data set of "
                            f"{modality.nouns}: use one of {', '.join(modality.generators) or '(none)'}, or none")
    device = use(params.runtime)
    started = time.perf_counter()
    generation = modality.generators[s.generator](params, paths, train, classes, device)
    generate_s = time.perf_counter() - started

    with atomic.replace_dir(paths.synthetic_dir) as staging:
        (staging / modality.folder).mkdir()
        rows = []
        for g in generation.items:
            iid = modality.content_id(g.item)
            name = f"{modality.folder}/{iid}{modality.suffix}"
            modality.write(staging / name, g.item)
            rows.append({**_row(s.generator, classes, g, iid, f"data/synthetic/{name}", generation.model_hash,
                                **modality.fields(g.item)), "empty": _empty(g.item)})
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS + PROVENANCE_COLUMNS[:4] + ["empty"])
        frame = frame.drop_duplicates("item_id").reset_index(drop=True)
        empty = frame.pop("empty").astype(bool)
        frame = select(frame, params, paths, staging, train, len(classes))
        frame.loc[empty.to_numpy(), ["kept", "dropped_because"]] = [False, "empty"]
        atomic.write_parquet(staging / "manifest.parquet", frame[MANIFEST_COLUMNS + PROVENANCE_COLUMNS])
    modality.synthetic_preview(frame, train, classes, params, paths)

    per_class = {label: {"generated": int((frame["label"] == label).sum()),
                         "kept": int(((frame["label"] == label) & frame["kept"]).sum()),
                         "real": int((train["label"] == label).sum())} for label in classes}
    report = {"generator": s.generator, "modality": modality.name, "model_hash": generation.model_hash,
              "generated": int(len(frame)), "kept": int(frame["kept"].sum()),
              "dropped": frame.loc[~frame["kept"], "dropped_because"].value_counts().to_dict(), "per_class": per_class,
              "generate_seconds": round(generate_s, 1), "device": str(device), **generation.info}
    atomic.write_json(paths.synthesize_report, report)
    return report


def _empty(item) -> bool:
    """A generated item with nothing in it (a language model's empty sample): never used."""
    return hasattr(item, "__len__") and len(item) == 0


def _row(generator: str, classes: list[str], g, item_id: str, path: str, model_hash: str, **shape) -> dict:
    """A synthetic manifest row with its provenance (``g``: a generated image or text)."""
    return {"item_id": item_id, "path": path, "source": f"{generator}:{classes[g.label_idx]}#{g.seed}",
            "label": classes[g.label_idx], "label_idx": g.label_idx, "split": SYNTHETIC, **shape, "note": "",
            "generator": generator, "prompt": g.prompt, "seed": g.seed, "model_hash": model_hash}


def select(frame: pd.DataFrame, params: Params, paths: Paths, staging, train: pd.DataFrame,
           n_classes: int) -> pd.DataFrame:
    """Confidence filter, near-duplicate filter and the per-class ratio cap; adds kept/why columns."""
    s = params.synthetic
    frame = frame.assign(confidence=np.nan, kept=True, dropped_because="")
    if frame.empty:
        return frame
    if s.min_confidence > 0 or s.dedup_similarity < 1.0:
        X_syn, probe_conf = _probe(frame, params, paths, staging, train, n_classes)
        frame["confidence"] = probe_conf
        has_real = frame["label_idx"].isin(set(train["label_idx"]))  # the probe knows nothing of the others
        low = (frame["confidence"] < s.min_confidence) & has_real
        frame.loc[low, ["kept", "dropped_because"]] = [False, "low_confidence"]
        if s.dedup_similarity < 1.0:
            drop_near_duplicates(frame, X_syn, s.dedup_similarity)
    real_counts = train["label_idx"].value_counts()
    for c in range(n_classes):
        # the ratio caps synthetic : real; a class with no real image (zero-shot) keeps all it got
        cap = int(np.floor(s.ratio * real_counts[c])) if c in real_counts.index else len(frame)
        idx = frame.index[(frame["label_idx"] == c) & frame["kept"]]
        order = frame.loc[idx].sort_values("confidence", ascending=False, kind="stable").index \
            if frame["confidence"].notna().any() else idx
        frame.loc[order[cap:], ["kept", "dropped_because"]] = [False, "ratio_cap"]
    return frame


def drop_near_duplicates(frame: pd.DataFrame, X: np.ndarray, threshold: float) -> None:
    """Greedily, per class, drop a kept image whose features' cosine similarity to an image kept
    before it exceeds ``threshold`` (frame has a RangeIndex aligned with the rows of X)."""
    unit = X / np.linalg.norm(X, axis=1, keepdims=True).clip(1e-12)
    for c in frame["label_idx"].unique():
        chosen: list[int] = []
        for i in frame.index[(frame["label_idx"] == c) & frame["kept"]]:
            if chosen and float((unit[chosen] @ unit[i]).max()) > threshold:
                frame.loc[i, ["kept", "dropped_because"]] = [False, "near_duplicate"]
            else:
                chosen.append(i)


def _probe(frame: pd.DataFrame, params: Params, paths: Paths, staging, train: pd.DataFrame, n_classes: int):
    """Features (shared content-addressed cache) and a real-data head's confidence in the intended class."""
    from ..features import cached_embeddings, feature_cache

    device = pick_device(params.runtime.device)
    modality = modalities.of_dataset(paths)
    backbone = modality.load_encoder(params, paths.root, modality.encoder_names(params)[0]).to(device, params.runtime.precision)
    cache = feature_cache(params, paths, backbone.key)

    def features(ids, files) -> np.ndarray:
        vectors, _ = cached_embeddings(cache, backbone, [(i, f, False) for i, f in zip(ids, files)],
                                       params.featurize.batch_size, device, desc="synthesize: probe features")
        return np.stack([vectors[i] for i in ids])

    X_train = features(train["item_id"].tolist(), [paths.resolve(p) for p in train["path"]])
    X_syn = features(frame["item_id"].tolist(), [staging / Path(p).relative_to("data/synthetic") for p in frame["path"]])
    # the probe: a linear head of the middle strength of train_head.C on the real training images
    recipe = HeadRecipe("linear", params.train_head.C[len(params.train_head.C) // 2])
    probe = fit_head(X_train, train["label_idx"].to_numpy(), n_classes, recipe, params.train_head, params.seed).head
    proba = predict_proba(probe, X_syn)
    return X_syn, proba[np.arange(len(frame)), frame["label_idx"].to_numpy()]


def _no_ddpm(paths: Paths, generator: str) -> None:
    """models/ddpm is a DVC output: without a DDPM it holds only a note saying so."""
    with atomic.replace_dir(paths.ddpm_dir) as staging:
        atomic.write_json(staging / "unused.json", {"generator": generator})


def _write_empty(paths: Paths) -> None:
    with atomic.replace_dir(paths.synthetic_dir) as staging:
        (staging / "images").mkdir()
        atomic.write_parquet(staging / "manifest.parquet",
                             pd.DataFrame(columns=MANIFEST_COLUMNS + PROVENANCE_COLUMNS))
