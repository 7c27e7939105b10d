"""The "no transfer" baseline: a small CNN trained from scratch with flips, on the same splits.

    .venv/bin/python benchmarks/baseline_scratch.py [--seeds 3] [--shots 5 10 20 50] [--data sample|full]

Per seed and shot count the pipeline's ingest makes the splits; the CNN (3 conv stages 32-64-128
with BatchNorm, global pooling, dropout) trains at the images' native size (28 px for Fashion-MNIST)
with horizontal flips and 2-px random shifts, AdamW, one-cycle schedule, up to --epochs epochs with
early stopping on val accuracy (best epoch restored) when ingest made a val split; in the
pipeline's CV mode (no val split) it trains on every labelled image for all --epochs epochs and
keeps the last. Prints test accuracy mean ± std and seconds; benchmarks/selection.py calls
`scratch_accuracy` for its baseline column.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import copy_project, ingest_cell, mean_std
from torch import nn
from torch.nn import functional as F

from pipeline_lib.config import load_params
from pipeline_lib.image.files import read_rgb
from pipeline_lib.paths import Paths


def small_cnn(n_classes: int) -> nn.Module:
    def stage(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]

    return nn.Sequential(*stage(3, 32), nn.MaxPool2d(2), *stage(32, 64), nn.MaxPool2d(2), *stage(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, n_classes))


def tensors(frame, paths) -> tuple[torch.Tensor, torch.Tensor]:
    if frame.empty:  # no val split (the pipeline's CV mode)
        return torch.zeros(0, 3, 1, 1), torch.zeros(0, dtype=torch.long)
    x = torch.from_numpy(np.stack([read_rgb(paths.resolve(p)) for p in frame["path"]])).permute(0, 3, 1, 2)
    x = x.float().div(255.0)
    return (x - 0.5) / 0.5, torch.tensor(frame["label_idx"].to_numpy(), dtype=torch.long)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(F.pad(x, (2, 2, 2, 2), value=-1.0), shifts=(dy, dx), dims=(2, 3))[..., 2:-2, 2:-2]


def train_scratch(train, val, n_classes: int, seed: int, epochs: int, patience: int = 40) -> nn.Module:
    """Trained CNN: the best epoch on val (early stopping), or the last epoch when val is empty."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = small_cnn(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    steps = epochs * math.ceil(len(train[0]) / 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    best, best_acc, stale = None, -1.0, 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train[0]), generator=gen)
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            loss = F.cross_entropy(model(augment(train[0][idx], gen)), train[1][idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if not len(val[1]):
            continue
        acc = accuracy(model, *val)
        if acc > best_acc:
            best, best_acc, stale = {k: v.clone() for k, v in model.state_dict().items()}, acc, 0
        else:
            stale += 1
            if stale >= patience:
                break
    if best is not None:
        model.load_state_dict(best)
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)]).argmax(1) == y)
                     .float().mean())


def scratch_accuracy(manifest, paths: Paths, n_classes: int, seed: int, epochs: int) -> tuple[float, float]:
    """(test accuracy, training seconds) of the scratch CNN on one ingest split."""
    split = {name: tensors(manifest[manifest["split"] == name], paths) for name in ("train", "val", "test")}
    started = time.perf_counter()
    model = train_scratch(split["train"], split["val"], n_classes, seed, epochs)
    seconds = time.perf_counter() - started
    return accuracy(model, *split["test"]), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--data", choices=["sample", "full"], default="sample")
    args = parser.parse_args()
    root = copy_project()
    paths = Paths.for_root(root)
    base = load_params(root).model_dump()
    print(f"small CNN from scratch on the {args.data} data (native size, flips + shifts), {args.seeds} seeds; "
          "test accuracy %, mean ± std; seconds per run")
    for shots in args.shots:
        acc, seconds = [], []
        for seed in range(args.seeds):
            _, manifest, classes = ingest_cell(base, seed, shots, args.data, root)
            a, sec = scratch_accuracy(manifest, paths, len(classes), seed, args.epochs)
            acc.append(a)
            seconds.append(sec)
        print(f"{shots:>5} shots  {mean_std(acc)}   {np.mean(seconds):5.1f} s", flush=True)


if __name__ == "__main__":
    main()
