"""Issue 11's comparison: the deployed model (default params, chosen by cross-validation over all
k labelled images per class and refitted on them) against scikit-learn's LogisticRegressionCV on
the same k labelled images' features (MobileNetV2 block 14, and EfficientNet-Lite2), k = 5/10/20/50,
several seeds, mean ± std of test accuracy; plus the wall time of each stage. With --peers, also
fastai's fine_tune(15) (benchmarks/peer_fastai.py) and the scratch CNN (baseline_scratch.py) on the
same images, in the same run (fastai lives in .venv-fastai: `make bench-fastai` builds it).

    .venv/bin/python benchmarks/selection.py [--seeds 5] [--first-seed 0] [--shots 5 10 20 50] [--data sample|full]
        [--set KEY=VALUE ...] [--unlabeled] [--only COLUMN ...]
    # --unlabeled: also semi_supervised.source=unused (heads only), and with semi_supervised.finetune too
    .venv-fastai/bin/python benchmarks/selection.py --data full --seeds 5 --unlabeled --peers

Each cell runs ingest → synthesize → augment → featurize → train_head → finetune → evaluate in a
fresh copy of the project (the feature cache is shared), then featurizes the same images with
tf_efficientnet_lite2 for the second reference. Run it alone: it is CPU-bound.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
import warnings
from collections import defaultdict

from _common import apply_overrides, benchmark_params, copy_project, mean_std

from pipeline_lib.config import load_params, parse_params
from pipeline_lib.dataset import load_manifest
from pipeline_lib.features import load_features
from pipeline_lib.paths import Paths
from pipeline_lib.stages import STAGES, featurize, stage_module


def lr_cv(paths: Paths) -> float:
    """LogisticRegressionCV (C by stratified k-fold, k = min(5, smallest class)) on every labelled image."""
    import numpy as np
    from sklearn.linear_model import LogisticRegressionCV
    from threadpoolctl import threadpool_limits

    X, y, _ = load_features(paths, "train")
    Xv, yv, _ = load_features(paths, "val")
    X, y = np.concatenate([X, Xv]), np.concatenate([y, yv])
    Xt, yt, _ = load_features(paths, "test")
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's announced default changes
        model = LogisticRegressionCV(Cs=10, cv=min(5, int(np.bincount(y).min())), max_iter=3000).fit(X, y)
    return float(model.score(Xt, yt))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--data", choices=["sample", "full"], default="sample")
    parser.add_argument("--unlabeled", action="store_true", help="also run with semi_supervised.source=unused")
    parser.add_argument("--peers", action="store_true", help="also fastai fine_tune(15) and the scratch CNN")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", nargs="*", default=None, metavar="COLUMN",
                        help="compute only these columns (e.g. 'deployed+unlabeled+ft': the other figures of the same "
                             "seeds are in an earlier run; every cell is deterministic)")
    args = parser.parse_args()
    if args.peers:
        try:
            import fastai  # noqa: F401
        except ImportError:
            parser.exit(2, "--peers needs fastai: run with .venv-fastai/bin/python (`make bench-fastai` builds it)\n")
        from baseline_scratch import scratch_accuracy
        from peer_fastai import fastai_accuracy

    root = copy_project()
    paths = Paths.for_root(root)
    base = apply_overrides(load_params(root).model_dump(), args.set)
    columns = (["deployed"] + (["deployed+unlabeled", "deployed+unlabeled+ft"] if args.unlabeled else [])
               + ["lr_cv mobilenet", "lr_cv lite2"] + (["fastai fine_tune(15)", "scratch CNN"] if args.peers else []))
    columns = [c for c in columns if args.only is None or c in args.only]
    print(f"{args.data} data, {args.seeds} seeds, test accuracy % (mean ± std); overrides: {' '.join(args.set) or 'none'}")
    print(f"{'shots':>5}  " + "  ".join(f"{c:>18}" for c in columns) + "  candidates / stage seconds")
    results: dict = defaultdict(lambda: defaultdict(list))
    for shots in args.shots:
        stage_s: dict[str, list[float]] = defaultdict(list)
        chosen = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            raw = benchmark_params(base, seed, shots, args.data, root)
            unlabeled = {**raw["semi_supervised"], "source": "unused"}
            variants = [("deployed", raw), ("deployed+unlabeled", {**raw, "semi_supervised": unlabeled}),
                        ("deployed+unlabeled+ft", {**raw, "semi_supervised": {**unlabeled, "finetune": True}})]
            for name, variant in [(n, v) for n, v in variants if n in columns or (n == "deployed" and "lr_cv mobilenet"
                                                                                  in columns)]:
                params = parse_params(variant)
                for stage in STAGES:
                    started = time.perf_counter()
                    with contextlib.redirect_stderr(io.StringIO()):
                        out = stage_module(stage).run(params, paths)
                    if name == "deployed":
                        stage_s[stage].append(time.perf_counter() - started)
                results[shots][name].append(out["accuracy"])
                if name == "deployed":
                    chosen.append(out["candidate"] + "/" + json.loads(paths.selection_report.read_text())["winner"])
                    results[shots]["lr_cv mobilenet"].append(lr_cv(paths))
                if name == "deployed+unlabeled+ft":
                    ft = json.loads(paths.finetune_report.read_text())
                    chosen.append(f"pseudo-labels {ft.get('finetune_pseudo_labels')} "
                                  f"({ft.get('finetune_pseudo_label_accuracy') or 0:.0%} right)")
            if "scratch CNN" in columns:
                manifest, classes = load_manifest(paths)
                results[shots]["fastai fine_tune(15)"].append(
                    fastai_accuracy(manifest, paths, seed, params.backbone.resolution, 15)[0])
                results[shots]["scratch CNN"].append(scratch_accuracy(manifest, paths, len(classes), seed, 150)[0])
            if "lr_cv lite2" in columns:
                lite = parse_params({**raw, "backbone": {**raw["backbone"], "name": "tf_efficientnet_lite2", "blocks": None}})
                with contextlib.redirect_stderr(io.StringIO()):
                    featurize.run(lite, paths)
                results[shots]["lr_cv lite2"].append(lr_cv(paths))
            print(f"  seed {seed}: " + "  ".join(f"{c} {results[shots][c][-1] * 100:.1f}" for c in columns), flush=True)
        times = " ".join(f"{k} {sum(v) / len(v):.0f}" for k, v in stage_s.items())
        print(f"{shots:>5}  " + "  ".join(f"{mean_std(results[shots][c]):>18}" for c in columns)
              + f"  {', '.join(chosen)} | {times}", flush=True)
    print(json.dumps({k: dict(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
