"""Fine-tuning of an image backbone (the image modality's runner of the finetune stage): linear
probe, then fine-tune (LP-FT) with selective unfreezing.

The classifier starts from the head trained by train_head. The last ``unfreeze_blocks`` blocks of
the backbone train at ``lr * backbone_lr_mult``, the head at ``lr``; AdamW, linear warm-up then
cosine decay, label smoothing, gradient clipping, the albumentations policy applied online
(pipeline_lib.image.finetuning holds the machinery). BatchNorm layers stay in eval mode: running
statistics never change, the affine weights of unfrozen blocks still train.

Two modes, as phases:
- holdout (a val split): prepare -> train with early stopping on val (epoch 0 = the probe) ->
  WiSE-FT alpha on val -> write outputs.
- cv (no val split): prepare the fold runs -> train them in lockstep, scoring the pooled
  out-of-fold predictions after each epoch -> WiSE-FT alpha and the keep-or-not decision ->
  refit on every labelled image for the best epoch's number of epochs -> write outputs.

Every epoch is checkpointed atomically; a killed run resumes from its last finished epoch and
ends where an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import json
import time
from functools import partial

import numpy as np
import pandas as pd
import torch

from .. import atomic
from ..atomic import Checkpoint
from ..config import Params
from ..dataset import UNLABELED, derived_from_labels, load_manifest, load_synthetic
from ..errors import PipelineError
from ..features import load_features
from ..heads import Head, HeadRecipe
from ..paths import Paths
from ..runtime import in_lanes
from ..selection import bias_corrected, keep, keep_threshold, scores, stratified_folds
from ..training_set import TrainingSet, fit_recipe, pseudo_labels
from .backbones import chosen_backbone, unfreeze
from .domain_adaptation import load_target_images
from .finetuning import Progress, Trainer, evaluate, interpolate, pick_alpha, restore, snapshot, train_epochs
from .networks import FinetuneModel, Images, build_model, predict_proba


def run(params: Params, paths: Paths, manifest: pd.DataFrame, n_classes: int, device,
        checkpoint: Checkpoint) -> tuple[dict, list[dict]]:
    """Fine-tune in holdout mode (a val split exists) or cv mode: (the report, one row per epoch)."""
    real_train, synthetic = manifest[manifest["split"] == "train"], load_synthetic(paths)
    val_frame = manifest[manifest["split"] == "val"]
    if len(val_frame):
        return _holdout(params, paths, real_train, synthetic, val_frame, device, checkpoint)
    return _cross_validated(params, paths, real_train, synthetic, n_classes, device, checkpoint)


def _images(params: Params, paths: Paths, frame: pd.DataFrame, preprocess, weights=None) -> Images:
    """A split's images, held in memory up to runtime.hold_images_mb."""
    return Images(frame, paths, preprocess, weights, hold_mb=params.runtime.hold_images_mb)


def _train_images(params: Params, paths: Paths, real: pd.DataFrame, extra: list[tuple[pd.DataFrame, float]],
                  preprocess) -> Images:
    """The real training images (weight 1), then each extra frame at its loss weight."""
    frames = [real] + [frame[real.columns] for frame, _ in extra]
    weights = np.concatenate([np.ones(len(real))] + [np.full(len(frame), w) for frame, w in extra])
    return _images(params, paths, pd.concat(frames, ignore_index=True), preprocess, weights)


def _pseudo_labelled(params: Params, paths: Paths, head: Head, real: pd.DataFrame, backbone: str | None,
                     n_classes: int) -> tuple[pd.DataFrame, dict]:
    """semi_supervised.finetune: the unlabelled images ``head`` (the run's probe) labels confidently,
    as training rows carrying their pseudo-label; never a val or test image."""
    s = params.semi_supervised
    if not s.finetune or s.source == "none":
        return real.iloc[:0], {}
    U, truth, ids = load_features(paths, UNLABELED, backbone)
    counts = np.bincount(real["label_idx"].to_numpy().astype(int), minlength=n_classes)
    chosen, pred, info = pseudo_labels(head, U, truth, counts, params)
    rows = load_manifest(paths)[0].set_index("item_id").loc[list(ids[chosen])].reset_index()
    if rows["split"].isin(["train", "val", "test"]).any():
        raise PipelineError("an unlabelled image is also a labelled one: run `dvc repro featurize` again.")
    return rows.assign(label_idx=pred[chosen]), {f"finetune_{k}": v for k, v in info.items()}


def _prepare(params: Params, paths: Paths, real: pd.DataFrame, synthetic: pd.DataFrame, device,
             head: Head | None = None) -> tuple[Trainer, dict, dict]:
    """A trainer for one run (from ``head``, else the trained head), the head's meta and what joined
    the training images (pseudo-labelled ones; with DANN, the target images)."""
    model, meta = build_model(params, paths, head)
    pseudo, info = _pseudo_labelled(params, paths, model.head, real, (meta.get("backbone_spec") or {}).get("name"),
                                    len(meta["classes"]))
    train = _train_images(params, paths, real, [(synthetic, params.synthetic.loss_weight),
                                                (pseudo, params.semi_supervised.weight)], model.preprocess)
    target, skipped = _target(params, paths, model, train, len(real))
    if target is not None:
        info.update(target_images=len(target), target_skipped=skipped)
    return Trainer(params, model, train, device, target), meta, info


def _target(params: Params, paths: Paths, model: FinetuneModel, train: Images, n_real: int
            ) -> tuple[Images | None, list]:
    if params.finetune.adapt != "dann":
        return None, []
    if not unfreeze(model.backbone, params.finetune.unfreeze_blocks):
        raise PipelineError("finetune.adapt: dann aligns the backbone's features, so it needs trainable blocks: "
                            "set finetune.unfreeze_blocks > 0 (or all)")
    pixels, skipped = load_target_images(params, paths, lambda: [train.image(i) for i in range(n_real)])
    return Images.unlabeled(pixels, model.preprocess), skipped


def _save(params: Params, paths: Paths, model: FinetuneModel, meta: dict) -> None:
    model.cpu().eval()
    with atomic.atomic_path(paths.finetuned_model) as tmp:
        torch.save(snapshot(model.state_dict()), tmp)
    atomic.write_json(paths.finetune_meta, {**meta, "finetune": params.finetune.model_dump(),
                                            "head": model.head.config})


def _common_report(params: Params, trainer: Trainer, synthetic: pd.DataFrame, device, progress: Progress,
                   info: dict) -> dict:
    last = progress.history[-1] if progress.history else {}
    return {"enabled": True, "n_train": len(trainer.train), "n_train_synthetic": len(synthetic),
            "trainable_backbone_params": trainer.trainable_backbone, "device": str(device),
            "adapt": params.finetune.adapt, **info,
            **({"domain_accuracy_last_epoch": last.get("domain_accuracy")} if "target_images" in info else {})}


# ---- holdout mode -----------------------------------------------------------------------------

def _holdout(params, paths, real_train, synthetic, val_frame, device, checkpoint: Checkpoint) -> tuple[dict, list]:
    p = params.finetune
    trainer, meta, info = _prepare(params, paths, real_train, synthetic, device)
    model, val = trainer.model, _images(params, paths, val_frame, trainer.model.preprocess)
    saved = checkpoint.load()
    progress = restore(saved, "holdout", [trainer])
    resumed_from = progress.epoch
    if resumed_from == 0:  # epoch 0 is the linear probe itself: fine-tuning must beat it on val
        loss0, acc0 = evaluate(model, val, p.batch_size, device, params.runtime.precision, trainer.workers)
        progress.best, progress.best_weights = (acc0, loss0), [snapshot(model.state_dict())]
        progress.extra = {"start": snapshot(model.state_dict()), "before": (acc0, loss0)}

    def validate(epoch, rows):
        with trainer.scored() as scored:
            loss, acc = evaluate(scored, val, p.batch_size, device, params.runtime.precision, trainer.workers)
        return acc, loss, {**rows[0], "val_loss": loss, "val_accuracy": acc}

    started = time.perf_counter()
    progress = train_epochs([trainer], progress, p.epochs, checkpoint, "holdout", validate, p.monitor, p.patience)
    seconds = time.perf_counter() - started
    start, best = progress.extra["start"], progress.best_weights[0]
    alpha, wise = 1.0, {}
    if progress.best_epoch > 0:
        def score(a):
            model.load_state_dict(interpolate(start, best, a))
            loss, acc = evaluate(model, val, p.batch_size, device, params.runtime.precision, trainer.workers)
            return _monitored(p.monitor, acc, loss), loss, acc

        alpha, results = pick_alpha(p.wise_alphas, score)
        wise = {f"{a:g}": round(r[2], 4) for a, r in results.items()}
    model.load_state_dict(interpolate(start, best, alpha))
    _save(params, paths, model, meta)
    best_row = progress.history[progress.best_epoch - 1] if progress.best_epoch else None
    acc0, loss0 = progress.extra["before"]
    report = {**_common_report(params, trainer, synthetic, device, progress, info),
              "mode": "holdout", "kept": progress.best_epoch > 0, "epochs_run": progress.epoch,
              "best_epoch": progress.best_epoch, "monitor": p.monitor,
              "best_val_loss": best_row["val_loss"] if best_row else loss0,
              "val_accuracy": best_row["val_accuracy"] if best_row else acc0,
              "val_accuracy_before": acc0, "val_loss_before": loss0, "kept_linear_probe": progress.best_epoch == 0,
              "resumed_from_epoch": resumed_from, "wise_alpha": alpha, "wise_val_accuracy": wise,
              "train_seconds": round(seconds, 2), "n_val": len(val)}
    return report, progress.history


def _monitored(monitor: str, acc: float, loss: float) -> float:
    """The value ``better`` compares first: accuracy, or minus the loss for finetune.monitor: val_loss."""
    return -loss if monitor == "val_loss" else acc


# ---- cv mode ----------------------------------------------------------------------------------

def _fold_heads(params: Params, paths: Paths, folds, n_classes: int) -> list[Head]:
    """The chosen head recipe fitted on each fold's training images: each fold's probe (LP-FT's
    starting point), which its fine-tuning must beat on the fold's held-out images."""
    meta = json.loads(paths.head_meta.read_text())
    recipe = HeadRecipe(**meta["recipe"])
    data = TrainingSet(params, paths, (meta.get("backbone_spec") or {}).get("name"))
    return [fit_recipe(data, fold.train, recipe, params, n_classes, params.seed + fold.fold)[0] for fold in folds]


class _Pooled:
    """Each fold's held-out images and the pooled out-of-fold probabilities of the fold runs."""

    def __init__(self, trainers: list[Trainer], folds, held: list[Images], y: np.ndarray, n_classes: int,
                 batch_size: int, device):
        self.trainers, self.folds, self.held, self.y = trainers, folds, held, y
        self.n_classes, self.batch_size, self.device = n_classes, batch_size, device

    def proba(self, weights: list[dict] | None = None) -> np.ndarray:
        """The pooled out-of-fold probabilities of the fold runs (``weights``: with these weights
        loaded instead); the folds are scored side by side on the CPU (in_lanes)."""
        def held_out(k: int) -> np.ndarray:
            trainer, images = self.trainers[k], self.held[k]
            if weights is not None:
                trainer.model.load_state_dict(weights[k])
            with contextlib.nullcontext(trainer.model) if weights is not None else trainer.scored() as scored:
                return predict_proba(scored, images, self.batch_size, self.device, precision=trainer.precision,
                                     workers=trainer.workers)

        out = np.full((len(self.y), self.n_classes), np.nan)
        for fold, proba in zip(self.folds, in_lanes([partial(held_out, k) for k in range(len(self.folds))],
                                                    self.device)):
            out[fold.held] = proba
        return out


def _cross_validated(params, paths, real_train, synthetic, n_classes, device, checkpoint) -> tuple[dict, list]:
    """k-fold fine-tuning in lockstep: after each epoch the pooled out-of-fold probabilities of all
    folds are scored; the best epoch (epoch 0 = each fold's probe) and WiSE-FT alpha are chosen,
    and their gain over the probe, with the optimism of that choice removed (BBC-CV) and a paired
    bootstrap standard error, decides: fine-tuning is kept only when the gain is significant at the
    one-sided selection.keep_level; then it is refitted on every labelled image for the best
    epoch's number of epochs (same schedule), otherwise the head alone is deployed."""
    y_all = real_train["label_idx"].to_numpy().astype(np.int64)
    if not np.array_equal(y_all, load_features(paths, "train")[1]):  # the same rows, whichever backbone
        raise PipelineError("data/features/train.npz does not match the manifest: run `dvc repro featurize`.")
    saved = checkpoint.load()
    if saved is not None and saved.get("phase") == "refit":
        decision, history = saved["decision"], saved["history"]
    else:
        decision, history = _decide(params, paths, real_train, synthetic, y_all, n_classes, device, checkpoint, saved)
    report = {**decision["report"]}
    if not report["kept"]:
        paths.finetuned_model.unlink(missing_ok=True)
        paths.finetune_oof.unlink(missing_ok=True)
        atomic.write_json(paths.finetune_meta, {"enabled": True, "kept": False})
        return report, history
    scored = decision["scored"].numpy()
    atomic.write_npz(paths.finetune_oof, y=y_all[scored], proba=decision["best_proba"].numpy()[scored].astype(np.float32))
    # refit on every labelled image from the head trained on all of them, for best_epoch epochs
    trainer, meta, info = _prepare(params, paths, real_train, synthetic, device)
    start = snapshot(trainer.model.state_dict())
    progress = restore(saved, "refit", [trainer])
    started = time.perf_counter()
    progress = train_epochs([trainer], progress, report["best_epoch"], checkpoint, "refit", desc="finetune refit",
                            keep={"decision": decision, "history": history})
    trainer.model.load_state_dict(interpolate(start, trainer.weights(), report["wise_alpha"]))
    _save(params, paths, trainer.model, meta)
    refit_seconds = time.perf_counter() - started
    report.update(_common_report(params, trainer, synthetic, device, Progress(history=history), info),
                  refit_epochs=report["best_epoch"], refit_seconds=round(refit_seconds, 2),
                  train_seconds=round(report["cv_seconds"] + refit_seconds, 2))
    return report, history


def _decide(params, paths, real_train, synthetic, y_all, n_classes, device, checkpoint, saved) -> tuple[dict, list]:
    """The CV phase: fold runs in lockstep, the pooled curve, WiSE-FT alpha, keep or not."""
    p, s, metric = params.finetune, params.selection, params.selection.metric
    folds = stratified_folds(y_all, s.finetune_folds, 1, params.seed + 7)
    preprocess = chosen_backbone(params, paths).preprocess
    in_folds = synthetic[~derived_from_labels(synthetic, params)]  # never what was made from held-out images
    prepared = [_prepare(params, paths, real_train.iloc[fold.train], in_folds, device, head)
                for fold, head in zip(folds, _fold_heads(params, paths, folds, n_classes))]
    trainers, info = [t for t, _, _ in prepared], prepared[-1][2]
    pooled = _Pooled(trainers, folds, [_images(params, paths, real_train.iloc[f.held], preprocess) for f in folds], y_all,
                     n_classes, p.batch_size, device)
    start = [snapshot(t.model.state_dict()) for t in trainers]  # each fold's probe: WiSE-FT's other end
    progress = restore(saved, "cv", trainers)
    resumed_from = progress.epoch
    if not progress.curve:
        probe = pooled.proba()
        ok = ~np.isnan(probe[:, 0])
        sc = scores(y_all[ok], probe[ok], n_classes)
        progress.curve.append({"epoch": 0, **sc})
        progress.best = (sc[metric], sc["log_loss"])
        progress.extra = {"probe": torch.from_numpy(probe), "scored": torch.from_numpy(ok), "curve_proba": []}
    ok = progress.extra["scored"].numpy()
    y_ok = y_all[ok]

    def validate(epoch, rows):
        proba = pooled.proba()
        progress.extra["curve_proba"].append(torch.from_numpy(proba[ok].astype(np.float32)))
        sc = scores(y_ok, proba[ok], n_classes)
        progress.curve.append({"epoch": epoch, **sc})
        row = {"epoch": epoch, "train_loss": float(np.mean([r["train_loss"] for r in rows])),
               "train_accuracy": float(np.mean([r["train_accuracy"] for r in rows])),
               "val_loss": sc["log_loss"], "val_accuracy": sc["accuracy"], f"cv_{metric}": sc[metric],
               "lr_head": rows[0]["lr_head"],
               **({"domain_accuracy": float(np.mean([r["domain_accuracy"] for r in rows]))}
                  if "domain_accuracy" in rows[0] else {})}
        return sc[metric], sc["log_loss"], row

    started = time.perf_counter()
    progress = train_epochs(trainers, progress, p.epochs, checkpoint, "cv", validate, "val_accuracy", p.patience)
    best_epoch, alpha, wise = progress.best_epoch, 1.0, {}
    best_proba = progress.extra["probe"].numpy()
    if best_epoch > 0:
        def score(a):
            proba = pooled.proba([interpolate(s0, s1, a) for s0, s1 in zip(start, progress.best_weights)])[ok]
            sc = scores(y_ok, proba, n_classes)
            return sc[metric], sc["log_loss"], proba

        alpha, results = pick_alpha(p.wise_alphas, score)
        wise = {f"{a:g}": round(r[0], 4) for a, r in results.items()}
        best_proba = np.full_like(best_proba, np.nan)
        best_proba[ok] = results[alpha][2]
    cv_seconds = time.perf_counter() - started
    gain = _corrected_gain(params, y_ok, progress, results if best_epoch > 0 else {}, alpha, n_classes)
    kept = best_epoch > 0 and keep(gain["gain"], gain["se"], s.keep_level)
    before, after = progress.curve[0], scores(y_ok, best_proba[ok], n_classes)
    report = _cv_report(params, kept, gain, before, after, progress, alpha, wise, len(folds), cv_seconds, resumed_from,
                        synthetic, in_folds, info)
    return {"report": report, "best_proba": torch.from_numpy(best_proba), "scored": progress.extra["scored"]}, \
        progress.history


def _cv_report(params: Params, kept: bool, gain: dict, before: dict, after: dict, progress: Progress, alpha: float,
               wise: dict, folds: int, cv_seconds: float, resumed_from: int, synthetic: pd.DataFrame,
               in_folds: pd.DataFrame, info: dict) -> dict:
    """The CV decision's report: the keep-or-not sentence, the curve, the corrected gain and its SE."""
    p, s, metric = params.finetune, params.selection, params.selection.metric
    best_epoch = progress.best_epoch
    reason = (f"fine-tuning {'kept' if kept else 'not kept'}: CV {metric} {before[metric]:.3f} (probe) -> "
              f"{after[metric]:.3f} at epoch {best_epoch}" + (f", WiSE-FT alpha {alpha:g}" if best_epoch else "")
              + f"; gain {gain['gain']:+.3f} ± {gain['se']:.3f} (SE) after removing the optimism of choosing the "
              f"epoch and alpha ({gain['optimism']:+.3f}); needs > {keep_threshold(s.keep_level):.2f} SE "
              f"(one-sided, level {s.keep_level:g})")
    report = {"enabled": True, "mode": "cv", "kept": bool(kept), "reason": reason, "folds": folds,
              "monitor": metric, "best_epoch": best_epoch, "epochs_run": progress.epoch, "wise_alpha": alpha,
              "wise_scores": wise, f"cv_{metric}_probe": before[metric], f"cv_{metric}": after[metric],
              "cv_accuracy_probe": before["accuracy"], "cv_accuracy": after["accuracy"],
              "gain": gain["gain"], "gain_se": gain["se"], "gain_naive": gain["gain_naive"],
              "gain_optimism": gain["optimism"], "keep_level": s.keep_level, "candidates": gain["candidates"],
              "probe_nested": False,  # each fold's probe is the head recipe chosen on all labels, refitted on the fold
              "cv_seconds": round(cv_seconds, 2),
              "train_seconds": round(cv_seconds, 2), "resumed_from_epoch": resumed_from,
              "n_train_synthetic": len(synthetic), "n_fold_synthetic": len(in_folds), "adapt": p.adapt,
              "kept_linear_probe": not kept,
              "curve": progress.curve, **info}
    if "target_images" in info and progress.history:
        report["domain_accuracy_last_epoch"] = progress.history[-1].get("domain_accuracy")
    return report


def _corrected_gain(params: Params, y: np.ndarray, progress: Progress, alphas: dict, alpha: float,
                    n_classes: int) -> dict:
    """The gain of the chosen (epoch, WiSE-FT alpha) over the probe with the optimism of the choice
    removed (BBC-CV over every candidate the choice saw: the probe, each epoch, each alpha at the
    best epoch; pipeline_lib.selection.bias_corrected)."""
    curve = [progress.extra["probe"].numpy()[progress.extra["scored"].numpy()]]
    curve += [t.numpy().astype(np.float64) for t in progress.extra["curve_proba"]]
    chosen = progress.best_epoch
    for a, result in alphas.items():
        if a != 1.0:
            curve.append(result[2])
            chosen = len(curve) - 1 if a == alpha else chosen
    return bias_corrected(y, np.stack(curve), n_classes, params.selection.metric, params.seed, chosen, baseline=0)
