"""Stage synthesize: generated training images for scarce classes (diffusers), filtered and capped.

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

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic
from ..config import Params
from ..dataset import MANIFEST_COLUMNS, PROVENANCE_COLUMNS, SYNTHETIC, is_text, load_manifest, load_synthetic
from ..encoder import encoder_names, load_encoder
from ..errors import PipelineError
from ..feature_cache import FeatureCache
from ..heads import HeadRecipe, fit_head, predict_proba
from ..image.files import image_id, read_rgb
from ..image.generators import Generated, dir_hash, sample_ddpm, sample_stable_diffusion, train_ddpm
from ..paths import Paths
from ..runtime import pick_device, use
from ..text.files import read_text


def run(params: Params, paths: Paths) -> dict:

    s = params.synthetic
    manifest, classes = load_manifest(paths)
    train = manifest[manifest["split"] == "train"]
    if is_text(manifest):
        return _text(params, paths, train, classes)
    k = params.synthetic.preview_per_class if s.generator == "none" else None  # none: only the preview's images
    real = {c: [read_rgb(paths.resolve(p)) for p in train.loc[train["label_idx"] == c, "path"][:k]]
            for c in range(len(classes))}
    if s.generator == "none":
        _write_empty(paths)
        _no_ddpm(paths, "none")
        preview(load_synthetic(paths, kept_only=False), real, classes, params, paths)  # real column only
        report = {"generator": "none", "generated": 0, "kept": 0}
        atomic.write_json(paths.synthesize_report, report)
        return report

    device = use(params.runtime)
    size = _common_size(train)
    started = time.perf_counter()
    info: dict = {}
    if s.generator == "ddpm":
        model_dir, info = _ddpm_model(params, paths, train, real, len(classes), device)
        seen = [c for c in range(len(classes)) if real[c]]  # a DDPM cannot draw a class it never saw
        generated = sample_ddpm(model_dir, len(classes), s.per_class, s.ddpm, params.seed, size, device,
                                class_ids=seen)
        model_hash = dir_hash(model_dir)
    else:
        _no_ddpm(paths, s.generator)
        generated, model_hash = sample_stable_diffusion(s.stable_diffusion, classes, s.per_class, params.seed,
                                                        device, real)
    generate_s = time.perf_counter() - started

    with atomic.replace_dir(paths.synthetic_dir) as staging:
        (staging / "images").mkdir()
        rows = []
        for g in generated:
            iid = image_id(g.pixels)
            atomic.write_png(staging / "images" / f"{iid}.png", g.pixels)
            rows.append(_row(s.generator, classes, g, iid, f"data/synthetic/images/{iid}.png", model_hash,
                             height=g.pixels.shape[0], width=g.pixels.shape[1], orig_mode="RGB"))
        frame = pd.DataFrame(rows).drop_duplicates("image_id").reset_index(drop=True)
        frame = select(frame, params, paths, staging, train, len(classes))
        atomic.write_parquet(staging / "manifest.parquet", frame[MANIFEST_COLUMNS + PROVENANCE_COLUMNS])
    preview(frame, real, classes, params, paths)

    unseen = [label for c, label in enumerate(classes) if not real[c]]
    if unseen and s.generator == "ddpm":
        info["not_generated"] = {"classes": unseen, "reason": "the ddpm learns from real images; a class with "
                                 "none (data.zero_shot_classes) needs synthetic.generator: stable_diffusion"}
    per_class = {label: {"generated": int((frame["label"] == label).sum()),
                         "kept": int(((frame["label"] == label) & frame["kept"]).sum()),
                         "real": int((train["label"] == label).sum())} for label in classes}
    report = {"generator": s.generator, "model_hash": model_hash, "generated": int(len(frame)),
              "kept": int(frame["kept"].sum()), "dropped": frame.loc[~frame["kept"], "dropped_because"]
              .value_counts().to_dict(), "per_class": per_class, "generate_seconds": round(generate_s, 1),
              "device": str(device), **{f"ddpm_{k}": v for k, v in info.items()}}
    atomic.write_json(paths.synthesize_report, report)
    return report


def _row(generator: str, classes: list[str], g, item_id: str, path: str, model_hash: str, **shape) -> dict:
    """A synthetic manifest row with its provenance (``g``: a generated image or text)."""
    return {"image_id": item_id, "path": path, "source": f"{generator}:{classes[g.label_idx]}#{g.seed}",
            "label": classes[g.label_idx], "label_idx": g.label_idx, "split": SYNTHETIC, **shape, "note": "",
            "generator": generator, "prompt": g.prompt, "seed": g.seed, "model_hash": model_hash}


def _common_size(train: pd.DataFrame) -> tuple[int, int]:
    """Generated images get the real training images' most common size."""
    if train.empty:
        raise PipelineError("synthesize: the training split is empty (check data.* params)")
    h, w = train.groupby(["height", "width"]).size().idxmax()
    return int(h), int(w)


def _ddpm_model(params: Params, paths: Paths, train: pd.DataFrame, real: dict, n_classes: int, device):
    """Train the DDPM once per (real training images, ddpm params, seed) and reuse it afterwards."""
    p = params.synthetic.ddpm
    key = hashlib.sha256(json.dumps({
        "images": sorted(zip(train["image_id"], train["label_idx"].astype(int).tolist())),
        "ddpm": p.model_dump(exclude={"checkpoint_every"}), "seed": params.seed}, sort_keys=True).encode()).hexdigest()[:16]
    cached = paths.ddpm_cache / key
    reused = (cached / "training.json").exists()
    if not reused:
        images = [img for c in range(n_classes) for img in real[c]]
        if len({img.shape for img in images}) > 1:  # mixed sizes: one size before stacking
            images = [_fit(img, (p.resolution, p.resolution, 3)) for img in images]
        labels = np.array([c for c in range(n_classes) for _ in real[c]])
        partial = paths.ddpm_cache / f"{key}.partial.pt"
        with atomic.replace_dir(cached) as staging:
            train_ddpm(np.stack(images), labels, n_classes, p, params.seed, staging, device, checkpoint=partial)
        partial.unlink(missing_ok=True)
    info = json.loads((cached / "training.json").read_text())
    with atomic.replace_dir(paths.ddpm_dir) as staging:  # the DVC output: a copy of the cached model
        shutil.copytree(cached, staging, dirs_exist_ok=True)
    return paths.ddpm_dir, {**info, "reused": reused}


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
    from ..features import cached_embeddings

    device = pick_device(params.runtime.device)
    text = is_text(train)
    backbone = load_encoder(params, paths.root, encoder_names(params, text)[0], text).to(device)
    cache = FeatureCache(paths.cache_dir(params), backbone.key)

    def features(ids, files) -> np.ndarray:
        vectors, _ = cached_embeddings(cache, backbone, [(i, f, False) for i, f in zip(ids, files)],
                                       params.featurize.batch_size, device, desc="synthesize: probe features")
        return np.stack([vectors[i] for i in ids])

    X_train = features(train["image_id"].tolist(), [paths.resolve(p) for p in train["path"]])
    X_syn = features(frame["image_id"].tolist(), [staging / Path(p).relative_to("data/synthetic") for p in frame["path"]])
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


def _text(params: Params, paths: Paths, train: pd.DataFrame, classes: list[str]) -> dict:
    """A text data set: templated texts (`template`) or a local language model's samples
    (`text_model`) per class, filtered and capped as images are; the preview is a table of real
    and synthetic texts per class."""
    from ..plots import plot_text_table
    from ..text.files import text_id
    from ..text.synthesis import sampled, templated

    s = params.synthetic
    if s.generator in ("ddpm", "stable_diffusion"):
        raise PipelineError(f"synthetic.generator: {s.generator} draws images, and this is a text data set: use "
                            "template or text_model (or none)")
    if s.generator == "none":
        _write_empty(paths)
        frame = load_synthetic(paths, kept_only=False)
        model_hash = ""
    else:
        started = time.perf_counter()
        if s.generator == "template":
            generated, model_hash = templated(classes, params.data.class_descriptions, s.templates), ""
        else:
            generated, folder = sampled(s.text_model, classes, params.data.class_descriptions, s.per_class,
                                        params.seed, paths.root, use(params.runtime))
            model_hash = dir_hash(folder)
        with atomic.replace_dir(paths.synthetic_dir) as staging:
            (staging / "texts").mkdir()
            rows = []
            for g in generated:
                tid = text_id(g.text)
                atomic.write_text(staging / "texts" / f"{tid}.txt", g.text)
                rows.append({**_row(s.generator, classes, g, tid, f"data/synthetic/texts/{tid}.txt", model_hash,
                                    height=0, width=0, orig_mode="text"), "empty": not g.text})
            frame = pd.DataFrame(rows).drop_duplicates("image_id").reset_index(drop=True)
            empty = frame.pop("empty")
            frame = select(frame, params, paths, staging, train, len(classes))
            frame.loc[empty.to_numpy(), ["kept", "dropped_because"]] = [False, "empty"]
            atomic.write_parquet(staging / "manifest.parquet", frame[MANIFEST_COLUMNS + PROVENANCE_COLUMNS])
        generate_s = round(time.perf_counter() - started, 1)
    _no_ddpm(paths, s.generator)
    k = min(s.preview_per_class, 3)  # texts need the width of several images
    rows, n_syn = [], k if len(frame) else 0
    for c, label in enumerate(classes):
        real = [read_text(paths.resolve(p)) for p in train.loc[train["label_idx"] == c, "path"][:k]]
        syn = frame[frame["label_idx"] == c].sort_values("kept", ascending=False, kind="stable").head(n_syn)
        synthetic = [read_text(paths.synthetic_dir / "texts" / f"{i}.txt") for i in syn["image_id"]]
        rows.append((label, real + [""] * (k - len(real)) + synthetic + [""] * (n_syn - len(synthetic))))
    plot_text_table(rows, [f"real {i + 1}" for i in range(k)] + [f"synthetic {i + 1}" for i in range(n_syn)],
                    paths.synthetic_preview)
    report = {"generator": s.generator, "modality": "text", "generated": int(len(frame)),
              "kept": int(frame["kept"].sum()) if len(frame) else 0}
    if len(frame):
        report.update(model_hash=model_hash, generate_seconds=generate_s,
                      dropped=frame.loc[~frame["kept"], "dropped_because"].value_counts().to_dict(),
                      per_class={label: {"generated": int((frame["label"] == label).sum()),
                                         "kept": int(((frame["label"] == label) & frame["kept"]).sum()),
                                         "real": int((train["label"] == label).sum())} for label in classes})
    atomic.write_json(paths.synthesize_report, report)
    return report


def preview(frame: pd.DataFrame, real: dict, classes: list[str], params: Params, paths: Paths) -> None:
    """One row per class: real training images, then synthetic ones (kept first); without any
    synthetic image (synthesis off), the real ones only."""
    from ..plots import plot_image_grid

    k = params.synthetic.preview_per_class
    n_real = max((len(real[c][:k]) for c in range(len(classes))), default=0)
    n_syn = k if len(frame) else 0
    rows = []
    for c, label in enumerate(classes):
        reals = real[c][:k]
        syn_rows = frame[frame["label_idx"] == c].sort_values("kept", ascending=False, kind="stable").head(k)
        syns = [read_rgb(paths.synthetic_dir / "images" / f"{i}.png") for i in syn_rows["image_id"]]
        sample = (reals + syns)[0] if reals + syns else np.zeros((8, 8, 3), np.uint8)
        blank = np.full_like(sample, 255)
        pad = lambda imgs, n: imgs + [blank] * (n - len(imgs))  # noqa: E731
        rows.append((label, pad(reals, n_real) + pad([_fit(img, sample.shape) for img in syns], n_syn)))
    plot_image_grid(rows, [f"real {i + 1}" for i in range(n_real)] + [f"synthetic {i + 1}" for i in range(n_syn)],
                    paths.synthetic_preview)


def _fit(img: np.ndarray, shape) -> np.ndarray:
    if img.shape == shape:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR))


__all__ = ["run", "select", "Generated"]
