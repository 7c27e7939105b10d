"""Helpers for tests and benchmarks: project copies, params edits, small image data sets."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import yaml
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


ROOT = Path(__file__).resolve().parents[1]


def copy_project(dst: Path | None = None) -> Path:
    """The project's source files (as git sees them, without run outputs) in a fresh git repo."""
    dst = dst or Path(tempfile.mkdtemp(prefix="project-")) / "project"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("reports/", "models/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def set_params(root: Path, **sections) -> None:
    """Update sections of root/params.yaml: set_params(root, data={"shots_per_class": 5})."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
