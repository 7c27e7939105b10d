"""Test accuracy at 5/10/20/50 labelled images per class on the embedded sample (1,000 test
images) or on per-seed draws from the full Fashion-MNIST (--data full, 2,000 test images), mean ±
std over seeds, per strategy, each through the pipeline's own stages:

  lr        scikit-learn LogisticRegressionCV (C chosen by 5-fold CV) on the cached features of all
            k labelled images per class (the linear-probe reference)
  head      train_head (the recipe chosen by CV, refitted on all k) on the cached features
  head_aug  train_head with the offline augmented copies added (augment.copies per image)
  finetune  the fine-tuned model when the finetune stage's CV kept it (runs where it did not
            are left out of this column; "kept" counts them)
  chosen    what evaluate deploys: the recipe chosen by cross-validation (selection.*)

    .venv/bin/python benchmarks/accuracy_vs_shots.py [--seeds 3] [--shots 5 10 20 50] [--data full]
        [--strategies head head_aug finetune] [--set finetune.epochs=30 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections import defaultdict
from pathlib import Path

from _common import apply_overrides, benchmark_params, copy_project, mean_std

from pipeline_lib.config import load_params, parse_params
from pipeline_lib.features import load_features
from pipeline_lib.paths import Paths
from pipeline_lib.stages import augment, evaluate, featurize, finetune, ingest, train_head


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--data", choices=["sample", "full"], default="sample",
                        help="the embedded sample (1,000 test images) or a per-seed draw from the full "
                             "Fashion-MNIST (Debian dataset-fashion-mnist; 2,000 test images)")
    parser.add_argument("--strategies", nargs="+", default=["head", "head_aug", "finetune"])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "reports" / "learning_curve"),
                        help="folder for learning_curve.png, results.json and recommendation.md")
    parser.add_argument("--mlflow", action="store_true", help="log the curve to MLflow (experiment learning-curve)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override params, as `dvc exp run -S`: --set finetune.epochs=20")
    args = parser.parse_args()
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV

    root = copy_project()
    paths = Paths.for_root(root)
    base = load_params(root).model_dump()
    apply_overrides(base, args.set)
    if args.set:
        print("overrides:", " ".join(args.set))
    names = ["lr", *args.strategies] + (["chosen"] if "finetune" in args.strategies else [])
    print(f"{args.data} data, {base['backbone']['name']} @ {base['backbone']['resolution']}px, {args.seeds} seeds; "
          "test accuracy %, mean ± std")
    print(f"{'shots':>5}  " + "  ".join(f"{n:>13}" for n in names) + "  finetune s")
    started = time.perf_counter()
    curves: dict[str, dict[int, list[float]]] = defaultdict(dict)
    for shots in args.shots:
        acc, ft_seconds = defaultdict(list), []
        for seed in range(args.seeds):
            raw = benchmark_params(base, seed, shots, args.data, root)
            params = parse_params(raw)
            with contextlib.redirect_stderr(io.StringIO()):
                ingest.run(params, paths)
                augment.run(params, paths)
                featurize.run(params, paths)
            X, y, _ = load_features(paths, "train")
            Xt, yt, _ = load_features(paths, "test")
            acc["lr"].append(float(LogisticRegressionCV(Cs=10, cv=min(5, int(np.bincount(y).min())),
                                                        max_iter=2000).fit(X, y).score(Xt, yt)))
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
                if "finetune" in metrics["models"]:
                    acc["finetune"].append(metrics["models"]["finetune"]["test_accuracy"])
                acc["chosen"].append(metrics["accuracy"])
        ft = f"{sum(ft_seconds) / len(ft_seconds):10.1f}" if ft_seconds else ""
        if "finetune" in args.strategies:
            ft += f"  kept {len(acc['finetune'])}/{args.seeds}"
            acc["finetune"] = acc["finetune"] or [float("nan")]
        print(f"{shots:>5}  " + "  ".join(f"{mean_std(acc[n]):>13}" for n in names) + f"  {ft}", flush=True)
        for name in names:
            curves[name][shots] = acc[name]
    print(f"(total {time.perf_counter() - started:.0f}s)")
    report(curves, Path(args.out), base["data"]["shots_per_class"] or max(args.shots), args)


def report(curves, out: Path, user_shots: int, args) -> None:
    """Learning-curve PNG, raw results and the plain-language recommendation (optionally to MLflow)."""
    from pipeline_lib import atomic
    from pipeline_lib.learning_curve import plot_learning_curve, recommend

    shown = {n: c for n, c in curves.items() if n != "chosen"}
    plot_learning_curve(shown, out / "learning_curve.png",
                        title=f"{args.data} data, {args.seeds} seeds (mean ± std)")
    atomic.write_json(out / "results.json", {n: {str(k): v for k, v in c.items()} for n, c in curves.items()})
    advice = recommend({n: c for n, c in shown.items() if n != "lr"}, user_shots)
    atomic.write_text(out / "recommendation.md", advice + "\n")
    print("\n" + advice + f"\n(written to {out})")
    if args.mlflow:
        import mlflow

        from pipeline_lib.paths import Paths

        mlflow.set_tracking_uri(Paths.for_root(Path(__file__).resolve().parents[1]).mlflow_uri)
        mlflow.set_experiment("learning-curve")
        with mlflow.start_run():
            mlflow.log_params({"seeds": args.seeds, "data": args.data, "shots": str(args.shots),
                               "overrides": " ".join(args.set) or "none"})
            for name, per in curves.items():
                for shots, values in per.items():
                    mlflow.log_metric(f"{name}.accuracy_mean", sum(values) / len(values), step=shots)
            mlflow.log_artifacts(str(out), artifact_path="learning_curve")


def _test_accuracy(params, paths) -> float:
    from pipeline_lib.heads import load_head, predict_proba

    head, _ = load_head(paths.head, paths.head_meta)
    Xt, yt, _ = load_features(paths, "test")
    return float((predict_proba(head, Xt).argmax(1) == yt).mean())


if __name__ == "__main__":
    main()
