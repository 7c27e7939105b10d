"""Shared helpers for the benchmark scripts (run from the project root with the .venv python)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import pipeline_lib  # noqa: F401  (telemetry off)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def copy_project(dst: Path | None = None) -> Path:
    """The project's source files (as git sees them) in a fresh git repo, without run outputs."""
    dst = dst or Path(tempfile.mkdtemp(prefix="bench-")) / "project"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("reports/", "models/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def set_params(root: Path, **sections) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def mean_std(values) -> str:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return f"{arr.mean() * 100:5.1f} ± {arr.std() * 100:3.1f}"
