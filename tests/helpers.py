"""Small image data sets written to disk for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline_lib import fashion_mnist


def write_folder_dataset(root: Path, per_class: int = 8, classes=("trouser", "bag", "sneaker"),
                         seed: int = 0) -> Path:
    """Real Fashion-MNIST images from the embedded sample as PNG files in root/<class>/."""
    sample = fashion_mnist.load_sample()
    names = list(sample["classes"])
    rng = np.random.default_rng(seed)
    for cls in classes:
        idx = np.flatnonzero(sample["y_pool"] == names.index(cls))
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(rng.choice(idx, size=per_class, replace=False)):
            Image.fromarray(sample["x_pool"][i], "L").save(root / cls / f"{cls}_{k}.png")
    return root


def solid(size=(16, 16), colour=(200, 30, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)
