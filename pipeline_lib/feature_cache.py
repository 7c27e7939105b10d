"""Content-addressed feature cache: one vector per (item content hash, encoder key), in shards.

The encoder key covers the model name, the weights file's hash and the preprocessing, so a
vector is reused only when it would be recomputed identically. On disk::

    <cache_dir>/<encoder key>/shards/<pid>-<time>-<random>.npz   keys (n,) and vectors (n, dim), float32
    <cache_dir>/<encoder key>/.tmp/                               shards being written

A shard is written whole to ``.tmp/`` and renamed into ``shards/``, so an interrupted run leaves
whole shards or none (a killed writer's temporaries are removed by the next run), and writing
60,000 vectors costs a few dozen files instead of 60,000 (one ``.npy`` per vector cost 0.37 ms
each, 14 % of featurize's time on 2 cores: docs/benchmarks.md "A 60,000-image pool"). Shards are
not fsynced: they are recomputable, and a shard a power cut damaged reads as misses, is removed,
and its vectors are recomputed. Caches of the old layout (``<key>/<ab>/<item>.npy``, one file per
vector) are packed into shards the first time they are opened.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .atomic import new_temp, remove_orphan
from .errors import io_error

_log = logging.getLogger(__name__)

SHARD_ITEMS = 4096  # vectors per shard written (featurize.cache_shard_items)
_OPEN_BYTES = 512 * 2**20  # vectors of the most recently read shards held in memory, at most (beyond one shard)


class FeatureCache:
    def __init__(self, root: str | Path, backbone_key: str, shard_items: int = SHARD_ITEMS):
        self.dir = Path(root) / backbone_key
        self.shards_dir = self.dir / "shards"
        self.tmp_dir = self.dir / ".tmp"
        self.shard_items = max(1, shard_items)
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._index: dict[str, tuple[str, int]] = {}  # key -> (shard file name, row)
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pending: dict[str, np.ndarray] = {}
        self._sweep()
        self._migrate()
        for shard in sorted(self.shards_dir.glob("*.npz")) if self.shards_dir.is_dir() else []:
            self._add_to_index(shard)

    def _sweep(self) -> None:
        if not self.tmp_dir.is_dir():
            return
        for tmp in self.tmp_dir.iterdir():
            remove_orphan(tmp, tmp.name.split(".", 1)[0])

    def _add_to_index(self, shard: Path) -> None:
        try:
            with np.load(shard, allow_pickle=False) as npz:
                keys = npz["keys"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            self._drop(shard.name)
            return
        self._index.update((str(key), (shard.name, row)) for row, key in enumerate(keys))

    def _drop(self, name: str) -> None:
        """Forget a damaged shard and remove it: its vectors read as misses and are recomputed."""
        _log.warning("feature cache: %s is damaged (interrupted disk write?): removed, its vectors are recomputed",
                     self.shards_dir / name)
        (self.shards_dir / name).unlink(missing_ok=True)
        self._index = {k: loc for k, loc in self._index.items() if loc[0] != name}
        self._open.pop(name, None)

    def _vectors(self, name: str) -> np.ndarray | None:
        if name in self._open:
            self._open.move_to_end(name)
            return self._open[name]
        try:
            with np.load(self.shards_dir / name, allow_pickle=False) as npz:
                vectors = npz["vectors"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            self._drop(name)
            return None
        self._open[name] = vectors
        while len(self._open) > 1 and sum(v.nbytes for v in self._open.values()) > _OPEN_BYTES:
            self._open.popitem(last=False)
        return vectors

    def get(self, item_id: str, dim: int | None = None) -> np.ndarray | None:
        """The cached vector, or None when absent, unreadable or (with ``dim``) of another size."""
        vec = self._pending.get(item_id)
        if vec is None and item_id in self._index:
            name, row = self._index[item_id]
            vectors = self._vectors(name)
            vec = None if vectors is None or row >= len(vectors) else vectors[row].copy()
        if vec is None or (dim is not None and vec.shape != (dim,)):
            self.misses += 1
            return None
        self.hits += 1
        return vec

    def put(self, item_id: str, vector: np.ndarray) -> None:
        """Cache a vector; it is written with the next shard (``flush``, or every shard_items puts)."""
        self._pending[item_id] = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if len(self._pending) >= self.shard_items:
            self.flush()

    def flush(self) -> None:
        """Write the vectors put since the last flush as shards (whole, or not at all)."""
        pending, self._pending = self._pending, {}
        by_dim: dict[int, list[str]] = {}
        for key, vec in pending.items():
            by_dim.setdefault(len(vec), []).append(key)
        for keys in by_dim.values():
            for start in range(0, len(keys), self.shard_items):
                part = keys[start:start + self.shard_items]
                self._write_shard(part, np.stack([pending[k] for k in part]))

    def _write_shard(self, keys: list[str], vectors: np.ndarray) -> None:
        name = f"{os.getpid()}-{time.time_ns():x}-{secrets.token_hex(3)}.npz"
        path, tmp = self.shards_dir / name, None
        try:
            self.shards_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(exist_ok=True)
            tmp = new_temp(self.tmp_dir, f"{os.getpid()}.")
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=np.asarray(keys, dtype=str), vectors=vectors)
            os.replace(tmp, path)
        except OSError as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise io_error(f"cannot write the feature cache shard {path}: {exc.strerror or exc}. Free some "
                           "space or point featurize.cache_dir at a writable folder.", exc) from exc
        except BaseException:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise
        self._index.update((key, (name, row)) for row, key in enumerate(keys))
        self.writes += len(keys)

    def _migrate(self) -> None:
        """Pack a cache of the old layout (one ``<ab>/<item>.npy`` per vector) into shards."""
        old = sorted(self.dir.glob("??/*.npy")) if self.dir.is_dir() else []
        if not old:
            return
        moved = 0
        for start in range(0, len(old), self.shard_items):
            for path in old[start:start + self.shard_items]:
                try:
                    self._pending[path.stem] = np.load(path, allow_pickle=False).astype(np.float32).reshape(-1)
                    moved += 1
                except (OSError, ValueError, EOFError):
                    pass  # unreadable (a damaged entry): a miss, recomputed
            self.flush()
            for path in old[start:start + self.shard_items]:
                path.unlink(missing_ok=True)
        for folder in {path.parent for path in old}:
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty (another process is still writing the old layout): left alone
        _log.info("feature cache %s: %d vectors of the one-file-per-vector layout packed into shards", self.dir, moved)

    def keys(self) -> set[str]:
        return set(self._index) | set(self._pending)

    def __len__(self) -> int:
        return len(self.keys())
