"""The peer: fastai's standard transfer recipe on exactly the pipeline's images and weights.

    make bench-fastai            # builds .venv-fastai (fastai beside the project's torch), runs this
    .venv-fastai/bin/python benchmarks/peer_fastai.py [--seeds 3] [--shots 20] [--epochs 5 15] [--data sample|full]

Per seed and shot count the pipeline's own ingest makes the splits (the same labelled and test
images the pipeline sees), then fastai does what its docs teach:

    dls = ImageDataLoaders.from_df(..., valid_pct=0.2, item_tfms=Resize(R), batch_tfms=aug_transforms())
    learn = vision_learner(dls, mobilenet_v2, metrics=accuracy); learn.fine_tune(epochs)

fastai needs a validation set: the split's val rows when ingest made one (holdout mode), else
fastai's default random 20 % of the labelled images (the pipeline's CV mode makes no val split).
The batch size is fastai's 64, or half the training images when there are fewer than 128: fastai
drops the last incomplete batch, so with 40 training images and bs=64 it never trains (8 % test
accuracy at 5 labelled images per class, below chance, before this).
The weights are the same offline MobileNetV2 IMAGENET1K_V1 file, loaded into torchvision's model
by the arch function; fastai has no model_meta entry for mobilenet_v2 (and ignores
vision_learner's `cut` for non-timm archs), so one is registered the way fastai describes its own
archs: cut before the classifier, default split, ImageNet stats (fastai then adds the
normalisation itself). Reports test accuracy (mean ± std) and the wall time of building the data
loaders + fine_tune per run. benchmarks/selection.py calls `fastai_accuracy` for its peer column.
"""

from __future__ import annotations

import argparse
import time
import warnings
from functools import lru_cache

import numpy as np
from _common import copy_project, ingest_cell, mean_std

from pipeline_lib.config import load_params
from pipeline_lib.image.backbones import resolve_weights
from pipeline_lib.paths import Paths


@lru_cache(maxsize=1)
def _mobilenet_v2_arch():
    import torch
    import torchvision
    from fastai.vision.all import imagenet_stats
    from fastai.vision.learner import default_split, model_meta

    weights = resolve_weights("mobilenet_v2").path

    def mobilenet_v2(pretrained: bool = True, **_):
        model = torchvision.models.mobilenet_v2(weights=None)
        if pretrained:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        return model

    # how fastai describes a torchvision arch it knows: body = all but the classifier, ImageNet stats
    model_meta[mobilenet_v2] = {"cut": -1, "split": default_split, "stats": imagenet_stats}
    return mobilenet_v2


def fastai_accuracy(manifest, paths: Paths, seed: int, resolution: int, epochs: int) -> tuple[float, float]:
    """(test accuracy, seconds of data loaders + fine_tune) of fastai's recipe on one ingest split."""
    warnings.filterwarnings("ignore")
    from fastai.vision.all import ImageDataLoaders, Resize, accuracy, aug_transforms, set_seed, vision_learner

    manifest = manifest.assign(path=[str(paths.resolve(p)) for p in manifest["path"]])
    fit = manifest[manifest["split"].isin(["train", "val"])].assign(is_valid=lambda f: f["split"] == "val")
    test = manifest[manifest["split"] == "test"]
    set_seed(seed, reproducible=True)
    started = time.perf_counter()
    split = {"valid_col": "is_valid"} if fit["is_valid"].any() else {"valid_pct": 0.2}
    n_train = int((~fit["is_valid"]).sum()) if fit["is_valid"].any() else int(len(fit) * 0.8)
    # fastai drops the last incomplete training batch: with its default bs=64 and fewer than 64
    # training images it would never take a step, so the batch is at most half the training images
    dls = ImageDataLoaders.from_df(fit, path="/", fn_col="path", label_col="label", item_tfms=Resize(resolution),
                                   batch_tfms=aug_transforms(), seed=seed, bs=min(64, max(2, n_train // 2)), **split)
    learn = vision_learner(dls, _mobilenet_v2_arch(), metrics=accuracy)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs)
        seconds = time.perf_counter() - started
        preds, _ = learn.get_preds(dl=dls.test_dl(test["path"].tolist()))
    vocab = list(dls.vocab)
    predicted = np.array([vocab[i] for i in preds.argmax(1).numpy()])
    return float((predicted == test["label"].to_numpy()).mean()), seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[20])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 15],
                        help="fine_tune(epochs) after its 1 frozen epoch; one row per value")
    parser.add_argument("--data", choices=["sample", "full"], default="sample")
    args = parser.parse_args()
    root = copy_project()
    paths = Paths.for_root(root)
    base = load_params(root).model_dump()
    resolution = base["backbone"]["resolution"]
    print(f"fastai fine_tune on the {args.data} data, mobilenet_v2 @ {resolution}px, "
          f"{args.seeds} seeds; test accuracy %, mean ± std; seconds per run")
    for shots, epochs in ((s, e) for s in args.shots for e in args.epochs):
        acc, seconds = [], []
        for seed in range(args.seeds):
            _, manifest, _ = ingest_cell(base, seed, shots, args.data, root)
            a, s = fastai_accuracy(manifest, paths, seed, resolution, epochs)
            acc.append(a)
            seconds.append(s)
        print(f"{shots:>5} shots  fine_tune({epochs:>2})  {mean_std(acc)}   {np.mean(seconds):5.1f} s", flush=True)


if __name__ == "__main__":
    main()
