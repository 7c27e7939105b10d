"""featurize throughput vs the raw backbone forward pass on the same images, batch and resolution.

Reference: the frozen MobileNetV2 on tensors already in memory and already resized (pure compute).
Measured: the featurize loop (read PNGs, resize, forward) and the whole stage on a cold cache
(read PNGs, resize, forward, write cache entries and feature matrices), and on a warm cache. Target ratio (stage / raw) >= 0.9.
Also prints the resolution trade-off: throughput and head accuracy (20 shots/class) per resolution.

    .venv/bin/python benchmarks/featurize_throughput.py [--resolution 112] [--batch 64]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import time

import torch
from _common import copy_project

from pipeline_lib.config import load_params, parse_params
from pipeline_lib.dataset import load_manifest
from pipeline_lib.features import load_features
from pipeline_lib.heads import load_head, predict_proba
from pipeline_lib.image.backbones import load_backbone, read_image_tensor
from pipeline_lib.paths import Paths
from pipeline_lib.runtime import configure_threads
from pipeline_lib.stages import featurize, ingest, train_head


def raw_forward(backbone, images: torch.Tensor, batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(images), batch):
        backbone(images[i:i + batch])
    return len(images) / (time.perf_counter() - started)


def measure(root, resolution: int, batch: int, repeats: int = 3) -> dict:
    paths = Paths.for_root(root)
    raw = load_params(root).model_dump()
    raw["backbone"]["resolution"] = resolution
    raw["featurize"]["batch_size"] = batch
    params = parse_params(raw)
    with contextlib.redirect_stderr(io.StringIO()):
        ingest.run(params, paths)
    manifest = load_manifest(paths)[0]
    manifest = manifest[manifest["split"].isin(["train", "val", "test"])]
    backbone = load_backbone("mobilenet_v2", resolution=resolution)
    files = [paths.resolve(p) for p in manifest["path"]]
    images = torch.stack([backbone.preprocess.resize(read_image_tensor(f)) for f in files])
    raw_forward(backbone, images[: 2 * batch], batch)  # warm-up
    raw_ips, loop_ips, cold_ips = [], [], []
    for _ in range(repeats):  # interleaved, best of each: the machine's speed drifts
        raw_ips.append(raw_forward(backbone, images, batch))
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            backbone.embed(files, batch, torch.device("cpu"))
        loop_ips.append(len(files) / (time.perf_counter() - started))
        shutil.rmtree(paths.cache_dir(params), ignore_errors=True)
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            report = featurize.run(params, paths)
        cold_ips.append(len(files) / (time.perf_counter() - started))
        assert report["computed"] == len(files)
    started = time.perf_counter()
    featurize.run(params, paths)
    warm_ips = len(manifest) / (time.perf_counter() - started)
    train_head.run(params, paths)
    head, _ = load_head(paths.head, paths.head_meta)
    Xt, yt, _ = load_features(paths, "test")
    acc = float((predict_proba(head, Xt).argmax(1) == yt).mean())
    assert report["computed"] == len(manifest)
    return {"n": len(manifest), "raw": max(raw_ips), "loop": max(loop_ips), "cold": max(cold_ips),
            "warm": warm_ips, "acc": acc}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=112)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tradeoff", type=int, nargs="*", default=[64, 96, 112, 160, 224])
    args = parser.parse_args()
    configure_threads(0)
    root = copy_project()
    r = measure(root, args.resolution, args.batch)
    print(f"featurize throughput, mobilenet_v2 @ {args.resolution}px, batch {args.batch}, {r['n']} images, "
          f"{torch.get_num_threads()} threads")
    print(f"  raw forward pass (reference): {r['raw']:7.1f} img/s")
    print(f"  featurize loop (read PNG, resize, forward): {r['loop']:7.1f} img/s   ratio {r['loop'] / r['raw']:.2f}"
          " (target >= 0.9)")
    print(f"  featurize stage, cold cache (+ model load, cache and matrix writes): {r['cold']:7.1f} img/s   "
          f"ratio {r['cold'] / r['raw']:.2f}")
    print(f"  featurize stage, warm cache: {r['warm']:7.1f} img/s   ratio {r['warm'] / r['raw']:.1f}")
    if args.tradeoff:
        print("\nresolution trade-off (20 shots/class, seed 42, 1000 test images):")
        print(f"  {'px':>4}  {'raw img/s':>9}  {'featurize img/s':>15}  {'ratio':>5}  {'test acc':>8}")
        for res in args.tradeoff:
            t = measure(root, res, args.batch, repeats=1)
            print(f"  {res:>4}  {t['raw']:9.1f}  {t['cold']:15.1f}  {t['cold'] / t['raw']:5.2f}  {t['acc']:8.1%}",
                  flush=True)


if __name__ == "__main__":
    main()
