"""The peer: fastai's standard transfer recipe on exactly the pipeline's images and weights.

    make bench-fastai            # builds .venv-fastai (fastai beside the project's torch), runs this
    .venv-fastai/bin/python benchmarks/peer_fastai.py [--seeds 3] [--shots 20] [--epochs 5 15] [--data sample|full]

Per seed and shot count the pipeline's own ingest makes the splits (the same train, val and test
images every strategy in accuracy_vs_shots.py sees), then fastai does what its docs teach:

    dls = ImageDataLoaders.from_df(..., item_tfms=Resize(R), batch_tfms=aug_transforms() + Normalize(imagenet))
    learn = vision_learner(dls, mobilenet_v2, metrics=accuracy); learn.fine_tune(epochs)

The weights are the same offline MobileNetV2 IMAGENET1K_V1 file, loaded into torchvision's model
by the arch function; fastai has no model_meta entry for mobilenet_v2 (and ignores
vision_learner's `cut` for non-timm archs), so one is registered the way fastai describes its own
archs: cut before the classifier, default split, ImageNet stats (fastai then adds the
normalisation itself). Reports test accuracy (mean ± std) and the wall time of building the data
loaders + fine_tune per run.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from _common import copy_project, ingest_cell, mean_std

from pipeline_lib.backbones import resolve_weights
from pipeline_lib.config import Paths, load_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[20])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 15],
                        help="fine_tune(epochs) after its 1 frozen epoch; one row per value")
    parser.add_argument("--data", choices=["sample", "full"], default="sample")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from fastai.vision.all import (ImageDataLoaders, Resize, accuracy, aug_transforms, imagenet_stats, set_seed,
                                   vision_learner)
    from fastai.vision.learner import default_split, model_meta
    import torchvision

    torch.set_num_threads(torch.get_num_threads())
    root = copy_project()
    paths = Paths.for_root(root)
    base = load_params(root).model_dump()
    resolution = base["backbone"]["resolution"]
    weights = resolve_weights("mobilenet_v2").path

    def mobilenet_v2(pretrained: bool = True, **_):
        model = torchvision.models.mobilenet_v2(weights=None)
        if pretrained:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        return model

    # how fastai describes a torchvision arch it knows: body = all but the classifier, ImageNet stats
    model_meta[mobilenet_v2] = {"cut": -1, "split": default_split, "stats": imagenet_stats}

    print(f"fastai fine_tune on the {args.data} data, mobilenet_v2 @ {resolution}px, "
          f"{args.seeds} seeds; test accuracy %, mean ± std; seconds per run")
    for shots, epochs in ((s, e) for s in args.shots for e in args.epochs):
        acc, seconds = [], []
        for seed in range(args.seeds):
            _, manifest, classes = ingest_cell(base, seed, shots, args.data, root)
            manifest["path"] = [str(paths.resolve(p)) for p in manifest["path"]]
            fit = manifest[manifest["split"].isin(["train", "val"])].assign(
                is_valid=lambda f: f["split"] == "val")
            test = manifest[manifest["split"] == "test"]
            set_seed(seed, reproducible=True)
            started = time.perf_counter()
            dls = ImageDataLoaders.from_df(fit, path="/", fn_col="path", label_col="label", valid_col="is_valid",
                                           item_tfms=Resize(resolution),
                                           batch_tfms=aug_transforms(),
                                           seed=seed)
            learn = vision_learner(dls, mobilenet_v2, metrics=accuracy)
            with learn.no_bar(), learn.no_logging():
                learn.fine_tune(epochs)
                seconds.append(time.perf_counter() - started)
                preds, _ = learn.get_preds(dl=dls.test_dl(test["path"].tolist()))
            vocab = list(dls.vocab)
            predicted = np.array([vocab[i] for i in preds.argmax(1).numpy()])
            acc.append(float((predicted == test["label"].to_numpy()).mean()))
        print(f"{shots:>5} shots  fine_tune({epochs:>2})  {mean_std(acc)}   {np.mean(seconds):5.1f} s  "
              f"(n_test {len(test)})", flush=True)


if __name__ == "__main__":
    main()
