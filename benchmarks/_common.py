"""Shared helpers for the benchmark scripts (run from the project root with the .venv python)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline_lib.runtime import process_environment  # noqa: E402

process_environment()
from pipeline_lib.dataset import load_manifest  # noqa: E402
from tests.helpers import copy_project, set_params  # noqa: E402

__all__ = ["ROOT", "backbone_parser", "copy_project", "set_params", "mean_std"]


def backbone_parser(description: str):
    """The arguments of a timing benchmark of one backbone: --repeats, --name, --blocks, --resolution
    (the pipeline's defaults: MobileNetV2 cut after 15 blocks, 112 px)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="mobilenet_v2")
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--resolution", type=int, default=112)
    return parser


def mean_std(values) -> str:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return f"{arr.mean() * 100:5.1f} ± {arr.std() * 100:3.1f}"


def full_data_npz(seed: int, out_dir: Path, pool_per_class: int = 120, test_per_class: int = 200) -> Path:
    """A per-seed draw from the full Fashion-MNIST (Debian's dataset-fashion-mnist), in the sample's
    format: a pool of 120 images per class from the 60,000 training images (k labelled, the rest
    `unused`: 1,000 unlabelled images at k = 20), 200 test images per class from t10k."""
    import numpy as np

    from pipeline_lib.image.fashion_mnist import build_sample

    path = Path(out_dir) / f"fashion_mnist_full_seed{seed}_pool{pool_per_class}.npz"
    if not path.exists():
        np.savez_compressed(path, **build_sample(pool_per_class, test_per_class, seed=1000 + seed))
    return path


def benchmark_params(base: dict, seed: int, shots: int, data: str, root: Path) -> dict:
    """Raw params for one (seed, shots) cell on the embedded sample or on a full-data draw."""
    raw = {**base, "seed": seed, "data": {**base["data"], "shots_per_class": shots}}
    if data == "full":
        raw["data"].update(source="sample", path=str(full_data_npz(seed, root)), sample_test_per_class=200)
    return raw


def apply_overrides(base: dict, items: list[str]) -> dict:
    """KEY=VALUE overrides (dotted keys, YAML values), as `dvc exp run -S` takes them."""
    import yaml

    for item in items:
        key, _, value = item.partition("=")
        *sections, leaf = key.split(".")
        target = base
        for section in sections:
            target = target[section]
        target[leaf] = yaml.safe_load(value)
    return base


def ingest_cell(base: dict, seed: int, shots: int, data: str, root: Path):
    """Params for one (seed, shots) cell and its splits, made by the pipeline's own ingest:
    (params, manifest, classes)."""
    import contextlib
    import io

    from pipeline_lib.config import parse_params
    from pipeline_lib.paths import Paths
    from pipeline_lib.stages import ingest

    paths = Paths.for_root(root)
    params = parse_params(benchmark_params(base, seed, shots, data, root))
    with contextlib.redirect_stderr(io.StringIO()):
        ingest.run(params, paths)
    manifest, classes = load_manifest(paths)
    return params, manifest, classes
