"""Stage train_head: a new output layer on the cached features, in seconds."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from . import atomic
from .config import Params, Paths
from .errors import PipelineError
from .featurize import AUGMENTED, SYNTHETIC, load_features
from .heads import predict_proba, save_head, train_head
from .ingest import load_manifest


def run(params: Params, paths: Paths) -> dict:
    _, classes = load_manifest(paths)
    X_train, y_train, _ = load_features(paths, "train")
    n_real = len(X_train)
    weight = np.ones(len(X_train), np.float32)
    if params.train_head.use_augmented:
        X_aug, y_aug, _ = load_features(paths, AUGMENTED)
        X_train, y_train = np.concatenate([X_train, X_aug]), np.concatenate([y_train, y_aug])
        weight = np.ones(len(X_train), np.float32)
    X_syn, y_syn, _ = load_features(paths, SYNTHETIC)
    if len(X_syn):
        X_train, y_train = np.concatenate([X_train, X_syn]), np.concatenate([y_train, y_syn])
        weight = np.concatenate([weight, np.full(len(X_syn), params.synthetic.loss_weight, np.float32)])
    missing = [c for i, c in enumerate(classes) if not (y_train == i).any()]
    if missing:
        raise PipelineError(
            f"class(es) {missing} have no training image, real or synthetic (data.zero_shot_classes need "
            "generated ones): set synthetic.generator: stable_diffusion with a local model, or drop them. "
            "The CLIP zero-shot baseline (evaluate.zero_shot_model) scores such classes without training.")
    X_val, y_val, _ = load_features(paths, "val")
    started = time.perf_counter()
    result = train_head(X_train, y_train, X_val, y_val, len(classes), params.train_head, params.seed, weight)
    seconds = time.perf_counter() - started

    meta = {"classes": classes, "backbone": params.backbone.model_dump(), "seed": params.seed}
    save_head(result.head, paths.head, paths.head_meta, meta)
    val_acc = None
    if len(X_val):
        val_acc = float((predict_proba(result.head, X_val).argmax(1) == y_val).mean())
    report = {
        "train_seconds": round(seconds, 3), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss, "val_accuracy": val_acc,
        "train_accuracy": float((predict_proba(result.head, X_train).argmax(1) == y_train).mean()),
        "n_train": int(len(X_train)), "n_train_real": n_real, "n_train_synthetic": int(len(X_syn)),
        "n_val": int(len(X_val)),
    }
    atomic.write_json(paths.train_head_report, report)
    with atomic.atomic_path(paths.train_head_history) as tmp:
        pd.DataFrame(result.history).to_csv(tmp, index=False)
    return report
