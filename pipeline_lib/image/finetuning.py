"""The fine-tuning machinery, in small named pieces the finetune stage composes.

- ``Trainer``: one training run (model, AdamW with discriminative learning rates, warm-up then
  cosine schedule) and ``train_epoch``, which composes the optional pieces: ``Mixup`` (mixes a
  batch and its loss), ``DomainAdversarial`` (DANN: adds the reversed-gradient domain loss) and
  ``WeightAverage`` (EMA of the weights, updated after each step). Every random draw is seeded
  from (seed, epoch), so a resumed run ends where an uninterrupted one would.
- ``side_by_side``: the fold runs of the CV decision side by side on the CPU (runtime.in_lanes).
- ``Progress`` (the loop's state) and ``Checkpoint`` (atomic save, load, clear): ``train_epochs``
  is the epoch loop both fine-tuning modes share — train each run one epoch, validate, keep the
  best, stop early, checkpoint.
- WiSE-FT: ``interpolate`` and ``pick_alpha``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ..atomic import Checkpoint
from ..config import Params
from ..runtime import autocast, chunks, grad_scaler, in_lanes, is_cuda, lane_pool, loader_workers, optimizer_step
from ..stats import nll
from .backbones import backbone_param_groups, unfreeze
from .domain_adaptation import DomainClassifier, dann_lambda
from .networks import FinetuneModel, Images, SeededDropout, predict_proba

_log = logging.getLogger(__name__)


def snapshot(state: dict) -> dict:
    """A detached copy of a state dict (weights that later steps must not change)."""
    return {k: v.detach().clone() for k, v in state.items()}


def interpolate(start: dict, tuned: dict, alpha: float) -> dict:
    """WiSE-FT: the weights (1 - alpha) * start + alpha * tuned (integer buffers from ``tuned``)."""
    return {k: torch.lerp(start[k].to(v.device), v, alpha) if v.dtype.is_floating_point else v
            for k, v in tuned.items()}


def pick_alpha(alphas: list[float], score: Callable) -> tuple[float, dict]:
    """The WiSE-FT mixing weight with the best score (ties: the larger alpha, nearer the tuned model);
    ``score(alpha)`` returns (metric value, log loss, anything to keep)."""
    results = {a: score(a) for a in sorted(set(alphas) | {1.0})}
    return max(results, key=lambda a: (round(results[a][0], 9), -round(results[a][1], 6), a)), results


def better(monitor: str, new: tuple[float, float], best: tuple[float, float]) -> bool:
    """Is (metric, loss) ``new`` an improvement on ``best``? ``val_loss``: the loss alone; otherwise
    the metric, ties broken by the loss."""
    (acc, loss), (best_acc, best_loss) = new, best
    if monitor == "val_loss":
        return loss < best_loss - 1e-6
    return acc > best_acc + 1e-9 or (abs(acc - best_acc) <= 1e-9 and loss < best_loss - 1e-6)


def evaluate(model: FinetuneModel, data: Images, batch_size: int, device, precision: str = "auto", workers: int = 0
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on a split."""
    proba = predict_proba(model, data, batch_size, device, precision=precision, workers=workers)
    y = data.labels.numpy()
    return nll(proba, y), float((proba.argmax(1) == y).mean()) if len(y) else 0.0


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy averaged with per-example weights (synthetic images may count less)."""
    per = F.cross_entropy(logits, y, label_smoothing=smoothing, reduction="none")
    return (per * w).sum() / w.sum().clamp_min(1e-12)


def lr_factor(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


class Mixup:
    """Mixes each batch with a permutation of itself, Beta(a, a) weights (``finetune.mixup``)."""

    def __init__(self, a: float, seed: int):
        self.a, self.seed = a, seed

    def mix(self, x: torch.Tensor, epoch: int, step_start: int, generator: torch.Generator):
        """The mixed batch and a loss function of (logits, y, w, smoothing) for it."""
        lam = float(np.random.default_rng([self.seed, epoch, step_start]).beta(self.a, self.a))
        perm = torch.randperm(len(x), device=x.device, generator=generator)

        def loss(logits, y, w, smoothing):
            return lam * weighted_ce(logits, y, w, smoothing) + (1 - lam) * weighted_ce(logits, y[perm], w[perm], smoothing)

        return lam * x + (1 - lam) * x[perm], loss


class DomainAdversarial:
    """DANN (``finetune.adapt: dann``): a domain classifier on the features, behind a gradient
    reversal whose weight ramps from 0 to ``finetune.dann_weight`` over training."""

    def __init__(self, in_dim: int, target: Images, weight: float, device):
        self.classifier = DomainClassifier(in_dim).to(device)
        self.target, self.weight, self.device = target, weight, device
        self.correct = self.seen = 0

    def loss(self, model: FinetuneModel, feats: torch.Tensor, progress: float, epoch: int,
             generator: torch.Generator) -> torch.Tensor:
        tidx = torch.randint(0, len(self.target), (len(feats),), generator=generator).tolist()
        both = torch.cat([feats, model.features(self.target.batch(tidx, epoch).to(self.device))])
        is_target = torch.cat([torch.zeros(len(feats)), torch.ones(len(tidx))]).to(self.device)
        logits = self.classifier(both, dann_lambda(progress, self.weight))
        self.correct += int(((logits > 0).float() == is_target).sum())
        self.seen += len(is_target)
        return F.binary_cross_entropy_with_logits(logits, is_target)

    def epoch_accuracy(self) -> dict:
        out = {"domain_accuracy": self.correct / self.seen} if self.seen else {}
        self.correct = self.seen = 0
        return out


class Trainer:
    """One fine-tuning run: a model, its optimiser and schedule (warm-up, cosine over
    ``finetune.epochs``) and the optional pieces; one ``train_epoch`` at a time; its whole state
    fits in a checkpoint."""

    halves = True  # a run alone on the CPU trains two halves of each batch side by side (_step_in_halves)

    def __init__(self, params: Params, model: FinetuneModel, train: Images, device, target: Images | None = None):
        p = self.p = params.finetune
        if p.online_augment:  # each item's draw seeded by (seed, epoch, item): the same in any process
            train = train.augmented(params.augment.policy, [params.seed, 0])
            target = target.augmented(params.augment.policy, [params.seed, 1]) if target is not None else None
        self.params, self.model, self.train, self.device = params, model, train, device
        self.trainable_backbone = unfreeze(model.backbone, p.unfreeze_blocks)
        model.to(device)
        self.dann = (DomainAdversarial(model.head.config["in_dim"], target, p.dann_weight, device)
                     if target is not None else None)
        self.mixup = Mixup(p.mixup, params.seed) if p.mixup > 0 else None
        groups = [{"params": list(model.head.parameters()), "lr": p.lr},
                  *backbone_param_groups(model.backbone, p.lr * p.backbone_lr_mult, p.backbone_lr_decay),
                  {"params": list(self.dann.classifier.parameters()) if self.dann else [], "lr": p.lr}]
        groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
        self.steps_per_epoch = math.ceil(len(train) / p.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(p.epochs * self.steps_per_epoch, p.warmup_epochs * self.steps_per_epoch))
        self.trainable = [q for g in groups for q in g["params"]]
        self.ema = WeightAverage(model, p.ema) if p.ema > 0 else None
        self.precision = params.runtime.precision
        self.scaler = grad_scaler(device, self.precision)  # fp16 on CUDA only
        self.workers = loader_workers(params.runtime.loader_workers, device)

    def scored(self):
        """The weights to score and keep: the averaged ones with finetune.ema, else the model's."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext(self.model)

    def weights(self) -> dict:
        return snapshot(self.ema.shadow if self.ema is not None else self.model.state_dict())

    def _step(self, loss: torch.Tensor, backward: Callable[[], None] | None = None) -> None:
        optimizer_step(loss, self.optimizer, self.scaler, self.trainable, self.p.grad_clip, backward)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def _generators(self, epoch: int) -> tuple[torch.Generator, torch.Generator]:
        """This epoch's random generators, seeded by (seed, epoch): one on the CPU (the order, DANN's
        target picks), one on the device (dropout masks, mixup's partners). The run's own, never
        torch's global one: fold runs may train side by side in threads (train_epochs)."""
        seed = self.params.seed * 1000 + epoch
        cpu = torch.Generator().manual_seed(seed)
        on_device = cpu if torch.device(self.device).type == "cpu" else torch.Generator(self.device).manual_seed(seed)
        for module in self.model.modules():
            if isinstance(module, SeededDropout):
                module.generator = on_device
        return cpu, on_device

    def train_epoch(self, epoch: int, desc: str = "finetune") -> dict:
        p, model, train, device = self.p, self.model, self.train, self.device
        generator, on_device = self._generators(epoch)  # dropout, order: a function of (seed, epoch)
        order = torch.randperm(len(train), generator=generator).tolist()
        model.train()
        if self.dann is not None:
            self.dann.classifier.train()
        total, correct, n = 0.0, 0, 0
        cuda = is_cuda(device)
        batches = train.batches(chunks(order, p.batch_size), epoch, self.workers, pin=cuda)
        # a run alone on the CPU (the refit, holdout mode) trains on two halves of each batch side
        # by side; not with DANN (its target batch) or BatchNorm in training mode (batch statistics)
        halves = (lane_pool(device) if self.halves and self.dann is None and not model.bn_train and self.scaler is None
                  else contextlib.nullcontext())
        with halves as pool, tqdm(total=len(train), desc=f"{desc} epoch {epoch}/{p.epochs}", unit="img",
                                  leave=False) as bar:
            for step, (x, y, w) in enumerate(batches):
                x, y, w = (t.to(device, non_blocking=cuda) for t in (x, y, w))
                x, loss_fn = (self.mixup.mix(x, epoch, step * p.batch_size, on_device) if self.mixup is not None
                              else (x, weighted_ce))
                if pool is not None and len(x) > 1:
                    loss, logits = self._step_in_halves(x, y, w, loss_fn, pool)
                else:
                    with autocast(device, self.precision):
                        feats = model.features(x)
                        logits = model.head(feats)
                        loss = loss_fn(logits.float(), y, w, p.label_smoothing)
                        if self.dann is not None:
                            progress = ((epoch - 1) * self.steps_per_epoch + step) / max(1, p.epochs * self.steps_per_epoch)
                            loss = loss + self.dann.loss(model, feats, progress, epoch, generator)
                    self._step(loss)
                total += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
                bar.update(len(y))
        return {"epoch": epoch, "train_loss": total / n, "train_accuracy": correct / n,
                "lr_head": self.optimizer.param_groups[0]["lr"],
                **(self.dann.epoch_accuracy() if self.dann is not None else {})}

    def _step_in_halves(self, x, y, w, loss_fn, pool) -> tuple[torch.Tensor, torch.Tensor]:
        """One step with the backbone's forward and backward passes on two halves of the batch,
        side by side in ``pool``'s threads (1.4x on 2 cores: docs/benchmarks.md "Fold runs side by
        side"); the head, its dropout masks and the loss see the whole batch in this thread, so the
        step is the one-pass step up to float rounding (tests/test_finetune.py)."""
        model, device = self.model, self.device

        def forward(part: torch.Tensor) -> torch.Tensor:
            with autocast(device, self.precision):  # thread-local: entered in the lane
                return model.features(part)

        feats = list(pool.map(forward, (x[:len(x) // 2], x[len(x) // 2:])))
        cut = [f.detach().requires_grad_() for f in feats]  # the head's graph ends here
        with autocast(device, self.precision):
            logits = model.head(torch.cat(cut))
            loss = loss_fn(logits.float(), y, w, self.p.label_smoothing)

        def backward() -> None:
            loss.backward()  # the head's gradients, and the loss's gradient at each half's features
            if feats[0].requires_grad:  # some backbone block is trained
                list(pool.map(lambda pair: pair[0].backward(pair[1].grad), zip(feats, cut)))

        self._step(loss, backward)
        return loss, logits

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "domain": self.dann.classifier.state_dict() if self.dann is not None else {},
                "ema": self.ema.state_dict() if self.ema is not None else {}}

    def load_state_dict(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        if self.dann is not None:
            self.dann.classifier.load_state_dict(saved["domain"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:
            self.ema = WeightAverage(self.model, self.p.ema, saved["ema"])


@dataclass
class Progress:
    """The epoch loop's state: what a checkpoint must restore besides the trainers."""

    epoch: int = 0
    best_epoch: int = 0
    stale: int = 0
    best: tuple[float, float] = (-math.inf, math.inf)  # (metric, loss) of the best epoch (0 = the probe)
    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    best_weights: list[dict] = field(default_factory=list)  # per trainer, at the best epoch
    extra: dict = field(default_factory=dict)  # what the mode keeps besides (the probe's scores, ...)


def restore(saved: dict | None, phase: str, trainers: list[Trainer]) -> Progress:
    """The progress of a checkpoint of this phase (its trainers restored), else a fresh one."""
    if saved is None or saved.get("phase") != phase:
        return Progress()
    for trainer, state in zip(trainers, saved["trainers"]):
        trainer.load_state_dict(state)
    return Progress(**saved["progress"])


def side_by_side(trainers: list[Trainer], epoch: int, desc: str) -> list[dict]:
    """One epoch of every trainer (the fold runs of the CV decision: side by side on the CPU,
    in_lanes); each run draws from its own generators, so the result does not depend on timing."""
    names = [desc if len(trainers) == 1 else f"{desc} fold {k + 1}/{len(trainers)}" for k in range(len(trainers))]
    return in_lanes([partial(t.train_epoch, epoch, desc=name) for t, name in zip(trainers, names)], trainers[0].device)


def train_epochs(trainers: list[Trainer], progress: Progress, last_epoch: int, checkpoint: Checkpoint, phase: str,
                 validate: Callable[[int, list[dict]], tuple[float, float, dict]] | None = None,
                 monitor: str = "val_accuracy", patience: int | None = None, desc: str = "finetune",
                 keep: dict | None = None) -> Progress:
    """Train every trainer one epoch at a time up to ``last_epoch``; ``validate(epoch, rows)``
    returns (metric, loss, history row) and the best epoch's weights are kept; stop after
    ``patience`` epochs without improvement; checkpoint after every epoch (with ``keep``)."""
    while progress.epoch < last_epoch and (patience is None or progress.stale < patience):
        epoch = progress.epoch + 1
        rows = side_by_side(trainers, epoch, desc)
        if validate is not None:
            metric, loss, row = validate(epoch, rows)
            progress.history.append(row)
            if better(monitor, (metric, loss), progress.best):
                progress.best, progress.best_epoch, progress.stale = (metric, loss), epoch, 0
                progress.best_weights = [t.weights() for t in trainers]
            else:
                progress.stale += 1
        progress.epoch = epoch
        _log.info("%s epoch %d/%d: %s", desc, epoch, last_epoch, ", ".join(
            f"{k} {v:.4g}" for k, v in (progress.history[-1] if validate is not None else rows[0]).items()
            if k != "epoch" and isinstance(v, float)))
        checkpoint.save({"phase": phase, "trainers": [t.state_dict() for t in trainers],
                         "progress": asdict(progress), **(keep or {})})
    return progress
