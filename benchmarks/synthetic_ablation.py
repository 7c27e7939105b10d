"""Does synthetic data help? Does DANN help? Measured, on the embedded sample, >= 3 seeds.

    .venv/bin/python benchmarks/synthetic_ablation.py [--part synthetic dann] [--seeds 3] [--shots 5 20]

synthetic: per (shots, seed) the DDPM is trained once on the real training images (the stage's own
  cache), then the variants differ only in which generated images are used:
    none            real images only
    ddpm r=X        ratio X synthetic : real per class, unfiltered
    ddpm r=1 filt   ratio 1, kept only if a real-data probe gives >= 0.5 to the intended class
    synthetic-only  nearest class mean of the synthetic features (no real label used to classify)
  Each variant: the head (train_head) on all variants, and fine-tuning (LP-FT) for
  --finetune-variants (default none / r=1 / r=1 filtered). Test accuracy %, mean ± std.
dann: a constructed domain shift. Source = the sample's images as they are (train/val); target =
  the same classes with a fixed appearance change (inverted contrast, Gaussian blur, a colour tint)
  applied only to the test split and to an unlabelled target folder (the pool, transformed; labels
  unused). Fine-tune source-only vs with adapt: dann; accuracy on the shifted test split.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from _common import apply_overrides, copy_project, mean_std
from PIL import Image, ImageFilter

from pipeline_lib.config import load_params, parse_params
from pipeline_lib.dataset import load_manifest, load_synthetic
from pipeline_lib.features import load_features
from pipeline_lib.image.fashion_mnist import load_sample
from pipeline_lib.paths import Paths
from pipeline_lib.stages import augment, evaluate, featurize, finetune, ingest, run_stages, synthesize, train_head

RATIOS = (0.5, 1.0, 2.0)


def quiet():
    return contextlib.redirect_stderr(io.StringIO())


def test_accuracy(params, paths) -> float:
    from pipeline_lib.heads import load_head, predict_proba

    head, _ = load_head(paths.head, paths.head_meta)
    Xt, yt, _ = load_features(paths, "test")
    return float((predict_proba(head, Xt).argmax(1) == yt).mean())


def finetune_accuracy(params, paths) -> float:
    with quiet():
        finetune.run(params, paths)
    return evaluate.run(params, paths)["models"].get("finetune", {}).get("test_accuracy", float("nan"))  # nan: CV did not keep it


def with_synthetic(raw: dict, **values) -> dict:
    return {**raw, "synthetic": {**raw["synthetic"], **values}}


def reselect(params, paths) -> None:
    """Apply params' ratio / min_confidence to the images already generated (no new sampling)."""
    frame = load_synthetic(paths, kept_only=False).drop(columns=["confidence", "kept", "dropped_because"])
    manifest, classes = load_manifest(paths)
    train, n_classes = manifest.query("split == 'train'"), len(classes)
    with quiet():
        frame = synthesize.select(frame, params, paths, paths.synthetic_dir, train, n_classes)
    from pipeline_lib import atomic

    atomic.write_parquet(paths.synthetic_manifest, frame)


def synthetic_part(args, root: Path, base: dict) -> None:
    paths = Paths.for_root(root)
    head, tuned = defaultdict(list), defaultdict(list)
    print(f"synthetic ablation: sample, {args.seeds} seeds, ddpm {base['synthetic']['ddpm']['train_steps']} steps; "
          "test accuracy %, mean ± std")
    for shots in args.shots:
        ddpm_s = []
        for seed in range(args.seeds):
            raw = {**base, "seed": seed, "data": {**base["data"], "shots_per_class": shots}}
            per_class = int(max(RATIOS) * shots)
            gen = parse_params(with_synthetic(raw, generator="ddpm", per_class=per_class, ratio=max(RATIOS)))
            with quiet():
                ingest.run(gen, paths)
                augment.run(gen, paths)
                report = synthesize.run(gen, paths)
            ddpm_s.append(report["ddpm_train_seconds"])
            variants = {"none": with_synthetic(raw, generator="none")}
            for r in RATIOS:
                variants[f"ddpm r={r:g}"] = with_synthetic(raw, generator="ddpm", per_class=per_class, ratio=r)
            variants["ddpm r=1 filt"] = with_synthetic(raw, generator="ddpm", per_class=per_class, ratio=1.0,
                                                       min_confidence=0.5)
            for name, variant in variants.items():
                params = parse_params(variant)
                if name == "none":
                    with quiet():
                        synthesize.run(params, paths)
                else:
                    if not load_synthetic(paths, kept_only=False).shape[0]:
                        with quiet():
                            synthesize.run(gen, paths)
                    reselect(params, paths)
                with quiet():
                    featurize.run(params, paths)
                    train_head.run(params, paths)
                head[(shots, name)].append(test_accuracy(params, paths))
                if name in args.finetune_variants:
                    tuned[(shots, name)].append(finetune_accuracy(params, paths))
                if name == "ddpm r=1":
                    with quiet():
                        metrics = evaluate.run(params, paths)
                    head[(shots, "synthetic-only")].append(metrics["baselines"]["synthetic_only"]["test_accuracy"])
        names = ["none", *[f"ddpm r={r:g}" for r in RATIOS], "ddpm r=1 filt", "synthetic-only"]
        print(f"{shots} shots/class (ddpm training {np.mean(ddpm_s):.0f} s)")
        for name in names:
            ft = mean_std(tuned[(shots, name)]) if tuned[(shots, name)] else "-"
            print(f"  {name:>15}  head {mean_std(head[(shots, name)])}   finetune {ft}", flush=True)


def shift(pixels: np.ndarray) -> np.ndarray:
    """The constructed target domain: inverted contrast, blur, a warm tint (uint8 gray -> RGB)."""
    img = Image.fromarray(255 - pixels).filter(ImageFilter.GaussianBlur(1.0)).convert("RGB")
    return (np.asarray(img, np.float32) * np.array([1.0, 0.8, 0.55])).round().clip(0, 255).astype(np.uint8)


def dann_part(args, root: Path, base: dict) -> None:
    paths = Paths.for_root(root)
    sample = load_sample()
    classes = [str(c) for c in sample["classes"]]
    raw_dir, target_dir = root / "data" / "raw_shift", root / "data" / "unlabeled_shift"
    rows = []
    for i, (x, y) in enumerate(zip(sample["x_pool"], sample["y_pool"])):
        path = raw_dir / classes[y] / f"pool_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(path)
        rows.append((str(path), classes[y], ""))
        target_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shift(x)).save(target_dir / f"u_{i}.png")
    for i, (x, y) in enumerate(zip(sample["x_test"], sample["y_test"])):
        path = raw_dir / "test" / f"test_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(shift(x)).save(path)
        rows.append((str(path), classes[y], "test"))
    manifest = root / "data" / "shift_manifest.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(manifest, index=False)
    results = defaultdict(list)
    domain_acc = []
    print(f"DANN on a constructed shift (target = inverted + blurred + tinted), {args.seeds} seeds, "
          f"{args.dann_shots} shots/class; accuracy % on the shifted test split")
    for seed in range(args.seeds):
        raw = {**base, "seed": seed,
               "data": {**base["data"], "source": "manifest", "path": str(manifest), "shots_per_class": args.dann_shots,
                        "unlabeled": str(target_dir)}}
        params = parse_params(raw)
        with quiet():
            run_stages(params, paths, last="train_head")
        results["head (source only)"].append(test_accuracy(params, paths))
        results["finetune (source only)"].append(finetune_accuracy(params, paths))
        for weight in args.dann_weights:
            dann = parse_params({**raw, "finetune": {**raw["finetune"], "adapt": "dann", "dann_weight": weight}})
            results[f"finetune + dann w={weight:g}"].append(finetune_accuracy(dann, paths))
            domain_acc.append(json_load(paths.finetune_report).get("domain_accuracy_last_epoch"))
    for name, values in results.items():
        print(f"  {name:>26}  {mean_std(values)}")
    print(f"  domain classifier accuracy, last epoch (0.5 = aligned): {np.mean([d for d in domain_acc if d]):.2f}")


def json_load(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", nargs="+", default=["synthetic", "dann"], choices=["synthetic", "dann"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--dann-shots", type=int, default=20)
    parser.add_argument("--dann-weights", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--finetune-variants", nargs="+", default=["none", "ddpm r=1", "ddpm r=1 filt"],
                        help="variants that are also fine-tuned (the head runs on all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="param overrides, as dvc exp run -S")
    args = parser.parse_args()
    root = copy_project()
    base = load_params(root).model_dump()
    apply_overrides(base, args.set)
    started = time.perf_counter()
    if "synthetic" in args.part:
        synthetic_part(args, root, base)
    if "dann" in args.part:
        dann_part(args, root, base)
    print(f"(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
