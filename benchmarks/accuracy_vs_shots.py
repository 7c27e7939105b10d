"""Test accuracy at 5/10/20/50 labelled images per class on the embedded sample (1,000 test
images), mean ± std over seeds: the pipeline's head (train_head, default params) next to the
standard linear-probe reference, scikit-learn's LogisticRegression on the same cached features.

    .venv/bin/python benchmarks/accuracy_vs_shots.py [--seeds 5] [--resolution 112]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

from _common import copy_project, mean_std

from pipeline_lib import featurize, ingest, train_head
from pipeline_lib.config import Paths, load_params, parse_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--resolution", type=int, default=112)
    parser.add_argument("--kind", default="linear")
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression

    root = copy_project()
    paths = Paths.for_root(root)
    base = load_params(root).model_dump()
    print(f"sample: 1000 test images, backbone mobilenet_v2 @ {args.resolution}px, head {args.kind}, "
          f"{args.seeds} seeds")
    print(f"{'shots':>5}  {'head (ours)':>13}  {'sklearn LR':>13}  {'diff':>6}  head fit s")
    started = time.perf_counter()
    for shots in args.shots:
        ours, ref, fit_s = [], [], []
        for seed in range(args.seeds):
            raw = {**base, "seed": seed, "data": {**base["data"], "shots_per_class": shots},
                   "backbone": {**base["backbone"], "resolution": args.resolution},
                   "train_head": {**base["train_head"], "kind": args.kind}}
            params = parse_params(raw)
            with contextlib.redirect_stderr(io.StringIO()):
                ingest.run(params, paths)
                featurize.run(params, paths)
            report = train_head.run(params, paths)
            fit_s.append(report["train_seconds"])
            from pipeline_lib.heads import load_head, predict_proba

            head, _ = load_head(paths.head, paths.head_meta)
            X, y, _ = featurize.load_features(paths, "train")
            Xt, yt, _ = featurize.load_features(paths, "test")
            ours.append(float((predict_proba(head, Xt).argmax(1) == yt).mean()))
            ref.append(float(LogisticRegression(max_iter=2000).fit(X, y).score(Xt, yt)))
        diff = (sum(ours) - sum(ref)) / len(ours) * 100
        print(f"{shots:>5}  {mean_std(ours):>13}  {mean_std(ref):>13}  {diff:+6.1f}  {sum(fit_s) / len(fit_s):.2f}",
              flush=True)
    print(f"(total {time.perf_counter() - started:.0f}s; ratio = head accuracy - reference accuracy, points)")


if __name__ == "__main__":
    main()
