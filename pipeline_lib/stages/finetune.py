"""Stage finetune: linear probe, then fine-tune (LP-FT) with selective unfreezing.

The classifier starts from the head trained by train_head (known to beat a random head on small
data). The last ``unfreeze_blocks`` blocks of the backbone train at ``lr * backbone_lr_mult``,
the head at ``lr``; AdamW, linear warm-up then cosine decay, label smoothing, gradient clipping,
the albumentations policy applied online, early stopping on val accuracy (ties: val loss) or val
loss with the best epoch restored.

BatchNorm: every BN layer stays in eval mode, frozen blocks and unfrozen ones alike: running
statistics are never updated (batches of a few images give useless statistics), while the BN
affine weights of unfrozen blocks still train.

Each epoch is checkpointed atomically; a killed run resumes from its last finished epoch and, as
every random draw is seeded from (seed, epoch), ends where an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .. import atomic, domain_adaptation
from ..augmentation import make_policy
from ..backbones import backbone_param_groups, chosen_backbone, pick_device, unfreeze
from ..config import Params, Paths
from ..dataset import load_manifest, load_synthetic
from ..domain_adaptation import DomainClassifier, dann_lambda, load_target_images
from ..errors import PipelineError
from ..features import load_features
from ..heads import Head
from ..networks import FinetuneModel, Images, build_model, predict_proba
from ..runtime import configure_threads
from ..selection import paired_bootstrap, scores, stratified_folds
from ..stats import nll


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _evaluate(model: FinetuneModel, data: Images, batch_size: int, device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a split."""
    proba = predict_proba(model, data, batch_size, device)
    y = data.labels.numpy()
    return nll(proba, y), float((proba.argmax(1) == y).mean()) if len(y) else 0.0


def _weighted_ce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy averaged with per-example weights (synthetic images may count less)."""
    per = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def snapshot(state: dict) -> dict:
    """A detached copy of a state dict (weights that later steps must not change)."""
    return {k: v.detach().clone() for k, v in state.items()}


class WeightAverage:
    """Exponential moving average of the model's weights (``finetune.ema``: its decay; 0 = off).

    The decay ramps up as min(decay, (1 + t) / (10 + t)) so the few hundred steps of a small run
    are not dominated by the starting point. Validation, early stopping and the saved model use the
    averaged weights; training continues on the raw ones.
    """

    def __init__(self, model: nn.Module, decay: float, state: dict | None = None):
        self.decay = decay
        self.steps = int(state["steps"]) if state else 0
        self.shadow = snapshot(state["shadow"] if state else model.state_dict())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The model with the averaged weights inside the block, its own weights restored after."""
        raw = snapshot(model.state_dict())
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(raw)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "shadow": self.shadow}


def _better(monitor: str, new: tuple[float, float], best: tuple[float, float]) -> bool:
    """Is (val accuracy, val loss) ``new`` an improvement on ``best`` for the monitored quantity?"""
    (acc, loss), (best_acc, best_loss) = new, best
    if monitor == "val_loss":
        return loss < best_loss - 1e-6
    return acc > best_acc + 1e-9 or (abs(acc - best_acc) <= 1e-9 and loss < best_loss - 1e-6)


def config_hash(params: Params, paths: Paths) -> str:
    """What a checkpoint must match to be resumed: the params and the inputs (data, head)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in params.model_dump().items()
                                   if k in ("seed", "backbone", "finetune", "augment", "synthetic", "train_head",
                                            "selection", "semi_supervised")}, sort_keys=True).encode())
    h.update(json.dumps(domain_adaptation.target_files(params, paths)).encode())
    for f in (paths.manifest, paths.head, paths.synthetic_manifest):
        h.update(f.read_bytes() if f.exists() else b"")
    return h.hexdigest()[:16]


HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr_head"]


class Run:
    """One fine-tuning run: a model, its optimiser and schedule (warm-up, cosine over
    ``finetune.epochs``), optional weight averaging and DANN; one ``train_epoch`` at a time,
    every random draw seeded from (seed, epoch); its whole state fits in a checkpoint."""

    def __init__(self, params: Params, model: FinetuneModel, train: Images, device, target: Images | None = None):
        p = self.p = params.finetune
        self.params, self.model, self.train, self.device, self.target = params, model, train, device, target
        self.trainable_backbone = unfreeze(model.backbone, p.unfreeze_blocks)
        model.to(device)
        self.domain = DomainClassifier(model.head.config["in_dim"]).to(device) if target is not None else None
        groups = [{"params": list(model.head.parameters()), "lr": p.lr},
                  *backbone_param_groups(model.backbone, p.lr * p.backbone_lr_mult, p.backbone_lr_decay),
                  {"params": list(self.domain.parameters()) if self.domain is not None else [], "lr": p.lr}]
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
        self.steps_per_epoch = math.ceil(len(train) / p.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(p.epochs * self.steps_per_epoch, p.warmup_epochs * self.steps_per_epoch))
        self.trainable = [q for g in groups for q in g["params"]]
        self.ema = WeightAverage(model, p.ema) if p.ema > 0 else None
        self.sizes = {img.shape[:2] for img in train.pixels + (target.pixels if target is not None else [])}

    def scored(self):
        """The weights to score and keep: the averaged ones with finetune.ema, else the model's."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext(self.model)

    def weights(self) -> dict:
        return snapshot(self.ema.shadow if self.ema is not None else self.model.state_dict())

    def train_epoch(self, epoch: int, desc: str = "finetune") -> dict:
        p, params, model, train, device, domain = self.p, self.params, self.model, self.train, self.device, self.domain
        torch.manual_seed(params.seed * 1000 + epoch)  # dropout, order: a function of (seed, epoch)
        policies = ({hw: make_policy(params.augment.policy, *hw, seed=params.seed * 1000 + epoch) for hw in self.sizes}
                    if p.online_augment else None)
        order = torch.randperm(len(train)).tolist()
        model.train()
        if domain is not None:
            domain.train()
        total_steps = p.epochs * self.steps_per_epoch
        total, correct, n, domain_correct, domain_n = 0.0, 0, 0, 0, 0
        with tqdm(total=len(train), desc=f"{desc} epoch {epoch}/{p.epochs}", unit="img", leave=False) as bar:
            for step, i in enumerate(range(0, len(order), p.batch_size)):
                idx = order[i:i + p.batch_size]
                x, y, w = train.batch(idx, policies).to(device), train.labels[idx].to(device), train.weights[idx].to(device)
                if p.mixup > 0:
                    lam = float(np.random.default_rng([params.seed, epoch, i]).beta(p.mixup, p.mixup))
                    perm = torch.randperm(len(idx), device=device)
                    x = lam * x + (1 - lam) * x[perm]
                feats = model.features(x)
                logits = model.head(feats)
                if p.mixup > 0:
                    loss = (lam * _weighted_ce(logits, y, w, p.label_smoothing)
                            + (1 - lam) * _weighted_ce(logits, y[perm], w[perm], p.label_smoothing))
                else:
                    loss = _weighted_ce(logits, y, w, p.label_smoothing)
                if domain is not None:
                    progress = ((epoch - 1) * self.steps_per_epoch + step) / max(1, total_steps)
                    tidx = torch.randint(0, len(self.target), (len(idx),)).tolist()
                    both = torch.cat([feats, model.features(self.target.batch(tidx, policies).to(device))])
                    is_target = torch.cat([torch.zeros(len(idx)), torch.ones(len(tidx))]).to(device)
                    d_logits = domain(both, dann_lambda(progress, p.dann_weight))
                    loss = loss + F.binary_cross_entropy_with_logits(d_logits, is_target)
                    domain_correct += int(((d_logits > 0).float() == is_target).sum())
                    domain_n += len(is_target)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.trainable, p.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(model)
                total += loss.item() * len(idx)
                correct += int((logits.argmax(1) == y).sum())
                n += len(idx)
                bar.update(len(idx))
        return {"epoch": epoch, "train_loss": total / n, "train_accuracy": correct / n,
                "lr_head": self.optimizer.param_groups[0]["lr"],
                **({"domain_accuracy": domain_correct / domain_n} if domain_n else {})}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "domain": self.domain.state_dict() if self.domain is not None else {},
                "ema": self.ema.state_dict() if self.ema is not None else {}}

    def load_state_dict(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        if self.domain is not None:
            self.domain.load_state_dict(saved["domain"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:
            self.ema = WeightAverage(self.model, self.p.ema, saved["ema"])


def _disabled(paths: Paths, reason: dict) -> dict:
    paths.finetuned_model.unlink(missing_ok=True)
    paths.finetune_oof.unlink(missing_ok=True)
    atomic.write_json(paths.finetune_meta, reason)
    atomic.write_json(paths.finetune_report, reason)
    with atomic.atomic_path(paths.finetune_history) as tmp:  # declared in dvc.yaml: no epochs, no rows
        pd.DataFrame(columns=HISTORY_COLUMNS).to_csv(tmp, index=False)
    return reason


def _target(params: Params, paths: Paths, model: FinetuneModel, real_pixels: list) -> tuple[Images | None, list]:
    if params.finetune.adapt != "dann":
        return None, []
    if not unfreeze(model.backbone, params.finetune.unfreeze_blocks):
        raise PipelineError("finetune.adapt: dann aligns the backbone's features, so it needs trainable blocks: "
                            "set finetune.unfreeze_blocks > 0 (or all)")
    pixels, skipped = load_target_images(params, paths, real_pixels)
    return Images.unlabeled(pixels, model.preprocess), skipped


def _load_checkpoint(ckpt, device):
    return torch.load(ckpt, map_location=device, weights_only=True) if ckpt.exists() else None


def run(params: Params, paths: Paths, stop_after_epoch: int | None = None) -> dict:
    """Fine-tune: holdout mode (a val split) trains on train with early stopping on val; cv mode
    decides by k-fold CV over the labelled images whether fine-tuning beats the probe and for how
    many epochs, then refits on all of them (see pipeline_lib.selection)."""
    p = params.finetune
    paths.finetune_dir.mkdir(parents=True, exist_ok=True)
    if not p.enabled:
        return _disabled(paths, {"enabled": False})
    configure_threads(params.featurize.num_threads)
    device = pick_device(params.featurize.device)
    manifest, classes = load_manifest(paths)
    real_train, synthetic = manifest[manifest["split"] == "train"], load_synthetic(paths)
    val_frame = manifest[manifest["split"] == "val"]
    ckpt = paths.finetune_checkpoint(config_hash(params, paths))
    if len(val_frame):
        out = _holdout(params, paths, real_train, synthetic, val_frame, device, ckpt, stop_after_epoch)
    else:
        out = _cross_validated(params, paths, real_train, synthetic, classes, device, ckpt, stop_after_epoch)
    if "interrupted_after_epoch" not in out:
        ckpt.unlink(missing_ok=True)
    return out


def _train_images(paths: Paths, real: pd.DataFrame, synthetic: pd.DataFrame, preprocess, loss_weight: float) -> Images:
    return Images(pd.concat([real, synthetic[real.columns]], ignore_index=True), paths, preprocess,
                  np.r_[np.ones(len(real)), np.full(len(synthetic), loss_weight)])


def _holdout(params, paths, real_train, synthetic, val_frame, device, ckpt, stop_after_epoch) -> dict:
    p = params.finetune
    model, meta = build_model(params, paths)
    train = _train_images(paths, real_train, synthetic, model.preprocess, params.synthetic.loss_weight)
    val = Images(val_frame, paths, model.preprocess)
    target, target_skipped = _target(params, paths, model, train.pixels[:len(real_train)])
    session = Run(params, model, train, device, target)
    state = {"epoch": 0, "best_epoch": 0, "stale": 0, "history": [], "best_state": None}
    saved = _load_checkpoint(ckpt, device)
    if saved is not None:
        session.load_state_dict(saved["run"])
        state = saved["state"]
    resumed_from = state["epoch"]
    if resumed_from == 0:  # epoch 0 is the linear probe itself: fine-tuning must beat it on val
        val_loss0, val_acc0 = _evaluate(model, val, p.batch_size, device)
        state.update(best_val_loss=val_loss0, best_val_accuracy=val_acc0, val_loss_before=val_loss0,
                     val_accuracy_before=val_acc0, best_state=snapshot(model.state_dict()),
                     start_state=snapshot(model.state_dict()))
    started = time.perf_counter()
    for epoch in range(state["epoch"] + 1, p.epochs + 1):
        if state["stale"] >= p.patience:
            break
        row = session.train_epoch(epoch)
        with session.scored() as scored:
            val_loss, val_acc = _evaluate(scored, val, p.batch_size, device)
        state["history"].append({**row, "val_loss": val_loss, "val_accuracy": val_acc})
        if _better(p.monitor, (val_acc, val_loss), (state["best_val_accuracy"], state["best_val_loss"])):
            state.update(best_val_loss=val_loss, best_val_accuracy=val_acc, best_epoch=epoch, stale=0,
                         best_state=session.weights())
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        with atomic.atomic_path(ckpt) as tmp:
            torch.save({"run": session.state_dict(), "state": state}, tmp)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return {"interrupted_after_epoch": epoch}
    seconds = time.perf_counter() - started
    alpha, wise = 1.0, {}
    if state["best_epoch"] > 0:
        def score(a):
            model.load_state_dict(interpolate(state["start_state"], state["best_state"], a))
            loss, acc = _evaluate(model, val, p.batch_size, device)
            return (acc if p.monitor == "val_accuracy" else -loss), loss, acc

        alpha, results = _pick_alpha(p.wise_alphas, score)
        wise = {f"{a:g}": round(r[2], 4) for a, r in results.items()}
    model.load_state_dict(interpolate(state["start_state"], state["best_state"], alpha))
    _save(params, paths, model, meta)
    report = {
        "enabled": True, "mode": "holdout", "kept": state["best_epoch"] > 0,
        "epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "monitor": p.monitor,
        "best_val_loss": state["best_val_loss"], "val_accuracy": state["best_val_accuracy"],
        "val_accuracy_before": state["val_accuracy_before"], "val_loss_before": state["val_loss_before"],
        "kept_linear_probe": state["best_epoch"] == 0, "resumed_from_epoch": resumed_from,
        "wise_alpha": alpha, "wise_val_accuracy": wise,
        "trainable_backbone_params": session.trainable_backbone, "train_seconds": round(seconds, 2),
        "n_train": len(train), "n_train_synthetic": len(synthetic), "n_val": len(val), "device": str(device),
        "adapt": p.adapt,
    }
    if target is not None:
        last = state["history"][-1] if state["history"] else {}
        report.update(target_images=len(target), target_skipped=target_skipped,
                      domain_accuracy_last_epoch=last.get("domain_accuracy"))
    return _finish(paths, report, state["history"])


def _save(params: Params, paths: Paths, model: FinetuneModel, meta: dict) -> None:
    model.cpu().eval()
    with atomic.atomic_path(paths.finetuned_model) as tmp:
        torch.save(copy.deepcopy(model.state_dict()), tmp)
    atomic.write_json(paths.finetune_meta, {**meta, "finetune": params.finetune.model_dump(),
                                            "head": model.head.config})


def _finish(paths: Paths, report: dict, history: list[dict]) -> dict:
    atomic.write_json(paths.finetune_report, report)
    with atomic.atomic_path(paths.finetune_history) as tmp:
        pd.DataFrame(history, columns=None if history else HISTORY_COLUMNS).to_csv(tmp, index=False)
    return report


def _fold_heads(params: Params, paths: Paths, folds, n_classes: int) -> list[Head]:
    """The chosen head recipe fitted on each fold's training images: each fold's probe (LP-FT's
    starting point), which its fine-tuning must beat on the fold's held-out images."""
    from ..heads import HeadRecipe
    from ..training_set import TrainingSet, fit_recipe

    meta = json.loads(paths.head_meta.read_text())
    recipe = HeadRecipe(**meta["recipe"])
    data = TrainingSet(params, paths, (meta.get("backbone_spec") or {}).get("name"))
    return [fit_recipe(data, fold.train, recipe, params, n_classes, params.seed + fold.fold)[0] for fold in folds]


def _cross_validated(params, paths, real_train, synthetic, classes, device, ckpt, stop_after_epoch) -> dict:
    """k-fold fine-tuning in lockstep: after each epoch the pooled out-of-fold probabilities of all
    folds are scored; the best epoch (epoch 0 = each fold's probe) and its gain over the probe,
    with a paired bootstrap standard error, decide. Fine-tuning is kept only when the gain exceeds
    selection.min_gain_se standard errors; then it is refitted on every labelled image for the
    best epoch's number of epochs (same schedule), otherwise the head alone is deployed."""

    p, s = params.finetune, params.selection
    n_classes = len(classes)
    y_all = real_train["label_idx"].to_numpy().astype(np.int64)
    if not np.array_equal(y_all, load_features(paths, "train")[1]):  # the same rows, whichever backbone
        raise PipelineError("data/features/train.npz does not match the manifest: run `dvc repro featurize`.")
    folds = stratified_folds(y_all, s.finetune_folds, 1, params.seed + 7)
    preprocess = chosen_backbone(params, paths).preprocess
    heads = _fold_heads(params, paths, folds, n_classes)
    sessions, held, targets = [], [], {}
    for fold, head in zip(folds, heads):
        model, _ = build_model(params, paths, head)
        train = _train_images(paths, real_train.iloc[fold.train], synthetic, preprocess, params.synthetic.loss_weight)
        target, skipped = _target(params, paths, model, train.pixels[:len(fold.train)])
        if target is not None:
            targets = {"target_images": len(target), "target_skipped": skipped}
        sessions.append(Run(params, model, train, device, target))
        held.append(Images(real_train.iloc[fold.held], paths, preprocess))
    metric = s.metric
    start = [snapshot(session.model.state_dict()) for session in sessions]  # each fold's probe: WiSE-FT's other end

    def pooled(weights: list[dict] | None = None) -> np.ndarray:
        proba = np.full((len(y_all), n_classes), np.nan)
        for k, (session, fold, images) in enumerate(zip(sessions, folds, held)):
            if weights is not None:
                session.model.load_state_dict(weights[k])
                proba[fold.held] = predict_proba(session.model, images, p.batch_size, device)
                continue
            with session.scored() as scored:
                proba[fold.held] = predict_proba(scored, images, p.batch_size, device)
        return proba

    state = {"epoch": 0, "stale": 0, "history": [], "curve": [], "best_epoch": 0}
    saved = _load_checkpoint(ckpt, device)
    if saved is not None and saved.get("phase") == "cv":
        for session, st in zip(sessions, saved["runs"]):
            session.load_state_dict(st)
        state = saved["state"]
    elif saved is not None:
        state = saved["state"]
    resumed_from = state["epoch"]
    started = time.perf_counter()
    if "probe" not in state:
        probe = pooled()
        state.update(probe=torch.from_numpy(probe), best_proba=torch.from_numpy(probe))
    scored_ok = ~torch.isnan(state["probe"][:, 0]).numpy()
    y_ok = y_all[scored_ok]
    if not state["curve"]:
        state["curve"].append({"epoch": 0, **scores(y_ok, state["probe"].numpy()[scored_ok], n_classes)})
    while state.get("phase_done") is not True and state["epoch"] < p.epochs and state["stale"] < p.patience:
        epoch = state["epoch"] + 1
        rows = [session.train_epoch(epoch, desc=f"finetune CV fold {k + 1}/{len(sessions)}")
                for k, session in enumerate(sessions)]
        proba = pooled()
        sc = scores(y_ok, proba[scored_ok], n_classes)
        best_sc = state["curve"][state["best_epoch"]]
        state["curve"].append({"epoch": epoch, **sc})
        state["history"].append({"epoch": epoch, "train_loss": float(np.mean([r["train_loss"] for r in rows])),
                                 "train_accuracy": float(np.mean([r["train_accuracy"] for r in rows])),
                                 "val_loss": sc["log_loss"], "val_accuracy": sc["accuracy"],
                                 f"cv_{metric}": sc[metric], "lr_head": rows[0]["lr_head"],
                                 **({"domain_accuracy": float(np.mean([r["domain_accuracy"] for r in rows]))}
                                    if "domain_accuracy" in rows[0] else {})})
        if _better("val_accuracy", (sc[metric], sc["log_loss"]), (best_sc[metric], best_sc["log_loss"])):
            state.update(best_epoch=epoch, best_proba=torch.from_numpy(proba), stale=0,
                         best_weights=[x.weights() for x in sessions])
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        with atomic.atomic_path(ckpt) as tmp:
            torch.save({"phase": "cv", "runs": [x.state_dict() for x in sessions], "state": state}, tmp)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            return {"interrupted_after_epoch": epoch}
    best_epoch = state["best_epoch"]
    alpha, wise = 1.0, {}
    if best_epoch > 0 and state.get("phase_done") is not True:
        def score(a):
            proba = pooled([interpolate(s0, s1, a) for s0, s1 in zip(start, state["best_weights"])])[scored_ok]
            sc = scores(y_ok, proba, n_classes)
            return sc[metric], sc["log_loss"], proba

        alpha, results = _pick_alpha(p.wise_alphas, score)
        wise = {f"{a:g}": round(r[0], 4) for a, r in results.items()}
        state.update(alpha=alpha, wise=wise, best_proba=torch.from_numpy(_fill(scored_ok, results[alpha][2])))
    alpha, wise = state.get("alpha", alpha), state.get("wise", wise)
    cv_seconds = time.perf_counter() - started
    best_proba = state["best_proba"].numpy()[scored_ok]
    gain = paired_bootstrap(y_ok, state["probe"].numpy()[scored_ok], best_proba, n_classes, metric, params.seed)
    keep = best_epoch > 0 and gain["gain"] > s.min_gain_se * gain["se"] and gain["gain"] > 0
    before = state["curve"][0]
    after = scores(y_ok, best_proba, n_classes)
    reason = (f"fine-tuning {'kept' if keep else 'not kept'}: CV {metric} {before[metric]:.3f} (probe) -> "
              f"{after[metric]:.3f} at epoch {best_epoch}" + (f", WiSE-FT alpha {alpha:g}" if best_epoch else "")
              + f", gain {gain['gain']:+.3f} ± {gain['se']:.3f} (SE); needs > {s.min_gain_se:g} SE")
    sessions.clear()  # free the fold models before the refit
    held.clear()
    report = {"enabled": True, "mode": "cv", "kept": bool(keep), "reason": reason, "folds": len(folds),
              "monitor": metric, "best_epoch": best_epoch, "epochs_run": state["epoch"], "wise_alpha": alpha,
              "wise_scores": wise,
              f"cv_{metric}_probe": before[metric], f"cv_{metric}": after[metric],
              "cv_accuracy_probe": before["accuracy"], "cv_accuracy": after["accuracy"],
              "gain": gain["gain"], "gain_se": gain["se"], "cv_seconds": round(cv_seconds, 2),
              "train_seconds": round(cv_seconds, 2),
              "resumed_from_epoch": resumed_from, "n_train_synthetic": len(synthetic), "adapt": p.adapt,
              "kept_linear_probe": not keep, "curve": state["curve"], **targets}
    if targets and state["history"]:
        report["domain_accuracy_last_epoch"] = state["history"][-1].get("domain_accuracy")
    if not keep:
        paths.finetuned_model.unlink(missing_ok=True)
        paths.finetune_oof.unlink(missing_ok=True)
        atomic.write_json(paths.finetune_meta, {"enabled": True, "kept": False})
        return _finish(paths, report, state["history"])
    atomic.write_npz(paths.finetune_oof, y=y_ok, proba=best_proba.astype(np.float32))
    # refit on every labelled image from the head trained on all of them, for best_epoch epochs
    model, meta = build_model(params, paths)
    train = _train_images(paths, real_train, synthetic, model.preprocess, params.synthetic.loss_weight)
    target, target_skipped = _target(params, paths, model, train.pixels[:len(real_train)])
    session = Run(params, model, train, device, target)
    refit_start = snapshot(model.state_dict())
    refit = {"epoch": 0}
    if saved is not None and saved.get("phase") == "refit":
        session.load_state_dict(saved["run"])
        refit = saved["refit"]
    started = time.perf_counter()
    for epoch in range(refit["epoch"] + 1, best_epoch + 1):
        session.train_epoch(epoch, desc="finetune refit")
        refit["epoch"] = epoch
        with atomic.atomic_path(ckpt) as tmp:
            torch.save({"phase": "refit", "run": session.state_dict(), "refit": refit,
                        "state": {**state, "phase_done": True}}, tmp)
        if stop_after_epoch is not None and state["epoch"] + epoch >= stop_after_epoch:
            return {"interrupted_after_epoch": state["epoch"] + epoch}
    model.load_state_dict(interpolate(refit_start, session.weights(), alpha))
    _save(params, paths, model, meta)
    report.update(refit_epochs=best_epoch, refit_seconds=round(time.perf_counter() - started, 2),
                  train_seconds=round(cv_seconds + time.perf_counter() - started, 2), n_train=len(train),
                  trainable_backbone_params=session.trainable_backbone, device=str(device))
    if target is not None:
        report.update(target_images=len(target), target_skipped=target_skipped)
    return _finish(paths, report, state["history"])


def _fill(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """An (len(mask), C) array: ``rows`` where mask is true, NaN elsewhere."""
    out = np.full((len(mask), rows.shape[1]), np.nan)
    out[mask] = rows
    return out


def interpolate(start: dict, tuned: dict, alpha: float) -> dict:
    """WiSE-FT: the weights (1 - alpha) * start + alpha * tuned (integer buffers from ``tuned``)."""
    return {k: torch.lerp(start[k].to(v.device), v, alpha) if v.dtype.is_floating_point else v
            for k, v in tuned.items()}


def _pick_alpha(alphas: list[float], score) -> tuple[float, dict]:
    """The WiSE-FT mixing weight with the best score (ties: the larger alpha, nearer the tuned model);
    ``score(alpha)`` returns (metric value, log loss, anything to keep)."""
    results = {a: score(a) for a in sorted(set(alphas) | {1.0})}
    return max(results, key=lambda a: (round(results[a][0], 9), -round(results[a][1], 6), a)), results


