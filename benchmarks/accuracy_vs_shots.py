"""Test accuracy at 5/10/20/50 labelled images per class on the embedded sample (1,000 test
images), mean ± std over seeds, per strategy, each through the pipeline's own stages:

  lr        scikit-learn LogisticRegression on the cached features (the linear-probe reference)
  head      train_head (the pipeline's linear head) on the cached features
  head_aug  train_head with the offline augmented copies added (augment.copies per image)
  finetune  LP-FT: the finetune stage started from that head
  chosen    what evaluate deploys: head or finetune, whichever is better on val

    .venv/bin/python benchmarks/accuracy_vs_shots.py [--seeds 3] [--shots 5 10 20 50]
        [--strategies head head_aug finetune]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections import defaultdict

from _common import copy_project, mean_std

from pipeline_lib import augment, evaluate, featurize, finetune, ingest, train_head
from pipeline_lib.config import Paths, load_params, parse_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--resolution", type=int, default=112)
    parser.add_argument("--strategies", nargs="+", default=["head", "head_aug", "finetune"])
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression

    root = copy_project()
    paths = Paths.for_root(root)
    base = load_params(root).model_dump()
    names = ["lr", *args.strategies] + (["chosen"] if "finetune" in args.strategies else [])
    print(f"sample: 1000 test images, mobilenet_v2 @ {args.resolution}px, {args.seeds} seeds; "
          "test accuracy %, mean ± std")
    print(f"{'shots':>5}  " + "  ".join(f"{n:>13}" for n in names) + "  finetune s")
    started = time.perf_counter()
    for shots in args.shots:
        acc, ft_seconds = defaultdict(list), []
        for seed in range(args.seeds):
            raw = {**base, "seed": seed, "data": {**base["data"], "shots_per_class": shots},
                   "backbone": {**base["backbone"], "resolution": args.resolution}}
            params = parse_params(raw)
            with contextlib.redirect_stderr(io.StringIO()):
                ingest.run(params, paths)
                augment.run(params, paths)
                featurize.run(params, paths)
            X, y, _ = featurize.load_features(paths, "train")
            Xt, yt, _ = featurize.load_features(paths, "test")
            acc["lr"].append(float(LogisticRegression(max_iter=2000).fit(X, y).score(Xt, yt)))
            if "head_aug" in args.strategies:
                aug = parse_params({**raw, "train_head": {**base["train_head"], "use_augmented": True}})
                train_head.run(aug, paths)
                acc["head_aug"].append(_test_accuracy(aug, paths))
            train_head.run(params, paths)
            acc["head"].append(_test_accuracy(params, paths))
            if "finetune" in args.strategies:
                with contextlib.redirect_stderr(io.StringIO()):
                    ft_seconds.append(finetune.run(params, paths)["train_seconds"])
                metrics = evaluate.run(params, paths)
                acc["finetune"].append(metrics["models"]["finetune"]["test_accuracy"])
                acc["chosen"].append(metrics["accuracy"])
        ft = f"{sum(ft_seconds) / len(ft_seconds):10.1f}" if ft_seconds else ""
        print(f"{shots:>5}  " + "  ".join(f"{mean_std(acc[n]):>13}" for n in names) + f"  {ft}", flush=True)
    print(f"(total {time.perf_counter() - started:.0f}s)")


def _test_accuracy(params, paths) -> float:
    from pipeline_lib.heads import load_head, predict_proba

    head, _ = load_head(paths.head, paths.head_meta)
    Xt, yt, _ = featurize.load_features(paths, "test")
    return float((predict_proba(head, Xt).argmax(1) == yt).mean())


if __name__ == "__main__":
    main()
