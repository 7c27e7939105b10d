"""Shared helpers for the benchmark scripts (run from the project root with the .venv python)."""

from __future__ import annotations

import sys
from pathlib import Path

import pipeline_lib  # noqa: F401  (telemetry off)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import copy_project, set_params  # noqa: E402

__all__ = ["ROOT", "copy_project", "set_params", "mean_std"]


def mean_std(values) -> str:
    import numpy as np

    arr = np.asarray(values, dtype=float)
    return f"{arr.mean() * 100:5.1f} ± {arr.std() * 100:3.1f}"
