"""Content-addressed feature cache: one vector per (image content hash, backbone key).

The backbone key covers the model name, the weights file's hash and the preprocessing, so a
vector is reused only when it would be recomputed identically. Entries are written atomically
(temporary file in ``<key>/.tmp/`` + rename): an interrupted run never leaves a truncated entry
behind, and the temporaries of a killed process (named by its pid) are removed by the next run.
Unlike the stage outputs (pipeline_lib.atomic), entries are not fsynced: the cache holds
thousands of small recomputable files, and an entry a power cut damaged reads as a miss
(``get``) and is recomputed and overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import new_temp, remove_orphan
from .errors import io_error


class FeatureCache:
    def __init__(self, root: str | Path, backbone_key: str):
        self.dir = Path(root) / backbone_key
        self.tmp_dir = self.dir / ".tmp"
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._sweep()

    def _sweep(self) -> None:
        if not self.tmp_dir.is_dir():
            return
        for tmp in self.tmp_dir.iterdir():
            remove_orphan(tmp, tmp.name.split(".", 1)[0])

    def _path(self, item_id: str) -> Path:
        return self.dir / item_id[:2] / f"{item_id}.npy"

    def get(self, item_id: str, dim: int | None = None) -> np.ndarray | None:
        """The cached vector, or None when absent, unreadable or (with ``dim``) of another size."""
        path = self._path(item_id)
        try:
            vec = np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError, EOFError):
            vec = None  # absent, or unreadable (a foreign or damaged file): recompute and overwrite it
        if vec is None or (dim is not None and vec.shape != (dim,)):
            self.misses += 1
            return None
        self.hits += 1
        return vec

    def put(self, item_id: str, vector: np.ndarray) -> None:
        path = self._path(item_id)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(exist_ok=True)
            tmp = new_temp(self.tmp_dir, f"{os.getpid()}.{item_id}.")
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(vector, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)  # no fsync per entry (unlike atomic.atomic_path): see the module doc
        except OSError as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise io_error(f"cannot write the feature cache entry {path}: {exc.strerror or exc}. Free some "
                           "space or point featurize.cache_dir at a writable folder.", exc) from exc
        except BaseException:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise
        self.writes += 1

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.npy")) if self.dir.exists() else 0
