"""Fashion-MNIST: the embedded sample shipped in the package, and the full set from Debian's
``dataset-fashion-mnist`` package (used by benchmarks and to rebuild the sample).

Fashion-MNIST is Copyright 2017 Zalando SE, MIT licence (see sample_data/LICENSE-fashion-mnist.txt).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..errors import PipelineError

CLASSES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
SAMPLE_FILE = Path(__file__).parents[1] / "sample_data" / "fashion_mnist_sample.npz"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def load_full(directory: Path = DEBIAN_DIR) -> dict[str, np.ndarray]:
    """The whole data set: x_train (60000,28,28), y_train, x_test (10000,28,28), y_test."""
    files = {
        "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [name for name in files.values() if not (directory / name).exists()]
    if missing:
        raise PipelineError(
            f"Fashion-MNIST files missing in {directory}: {', '.join(missing)}. Install them with "
            "`apt-get update && apt-get install dataset-fashion-mnist`."
        )
    out = {}
    for key, name in files.items():
        is_images = key.startswith("x")
        arr = _read_idx(directory / name, 16 if is_images else 8)
        out[key] = arr.reshape(-1, 28, 28) if is_images else arr.astype(np.int64)
    return out


def build_sample(pool_per_class: int = 100, test_per_class: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """A stratified sample: a labelled pool from the training set and a test set from t10k."""
    full = load_full()
    rng = np.random.default_rng(seed)

    def pick(y: np.ndarray, k: int) -> np.ndarray:
        idx = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in range(len(CLASSES))]
        return np.sort(np.concatenate(idx))

    pool = pick(full["y_train"], pool_per_class)
    test = pick(full["y_test"], test_per_class)
    return {
        "x_pool": full["x_train"][pool], "y_pool": full["y_train"][pool],
        "x_test": full["x_test"][test], "y_test": full["y_test"][test],
        "classes": np.array(CLASSES),
    }


def load_sample(path: Path = SAMPLE_FILE) -> dict[str, np.ndarray]:
    """The sample's arrays: x_pool, y_pool (labelled pool), x_test, y_test, classes."""
    if not path.is_file():
        raise PipelineError(f"sample file {path} not found: with data.source: sample, data.path must be "
                            f"an .npz in the sample format (default {SAMPLE_FILE.name}).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            sample = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise PipelineError(f"sample file {path} is not a readable .npz: {exc}") from None
    missing = {"x_pool", "y_pool", "x_test", "y_test", "classes"} - set(sample)
    if missing:
        raise PipelineError(f"sample file {path} lacks arrays {sorted(missing)}")
    return sample


if __name__ == "__main__":  # rebuild the embedded sample: python -m pipeline_lib.image.fashion_mnist
    sample = build_sample()
    SAMPLE_FILE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(SAMPLE_FILE, **sample)
    print(f"wrote {SAMPLE_FILE} ({SAMPLE_FILE.stat().st_size / 1024:.0f} KiB)")
