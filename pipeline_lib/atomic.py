"""Atomic writes: write to a temporary file in the same folder, fsync, then rename over the target.

A reader never sees a half-written file, and an interrupted write leaves the old file intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import PipelineError, io_error

_TEMP_SUFFIXES = (".tmp", ".staging", ".old")


def _cannot_write(target: Path, exc: OSError) -> PipelineError:
    return io_error(f"cannot write to {target.parent}: {exc.strerror}. Check that the folder is writable "
                    "and that the disk is not full.", exc)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(target: Path) -> None:
    """Remove the temporaries of ``target`` left behind by a killed process.

    Temporaries are named ``.<name>.<pid>.<random><suffix>``; one whose process is gone is removed,
    so a SIGKILL mid-write leaves no clutter beside (or inside a DVC output folder next to) the
    target once the stage runs again.
    """
    prefix = f".{target.name}."
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.suffix in _TEMP_SUFFIXES]
    except OSError:
        return
    for path in candidates:
        remove_orphan(path, path.name[len(prefix):].split(".", 1)[0])


def remove_orphan(path: Path, pid: str) -> None:
    """Remove a temporary (file or folder) written by process ``pid`` if that process is gone."""
    if pid.isdigit() and not pid_alive(int(pid)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def new_temp(folder: Path, prefix: str) -> Path:
    """Create an empty, new temporary file ``<prefix><random>.tmp`` in ``folder``, with the mode a
    plain open() would give (0666 less the process umask, applied by the OS: no umask juggling)."""
    while True:
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        tmp_path = new_temp(target.parent, f".{target.name}.{os.getpid()}.")
    except OSError as exc:
        raise _cannot_write(target, exc) from exc
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise io_error(f"could not write {target}: {exc.strerror or exc}", exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replace_dir(target: str | Path) -> Iterator[Path]:
    """Build a folder's new content in a staging folder beside it; swap it in only on success.

    The old folder stays complete until the new one is; an error leaves it untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".staging", dir=target.parent))
    except OSError as exc:
        raise _cannot_write(target, exc) from exc
    try:
        yield staging
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.{os.getpid()}.x.old")
            os.replace(target, old)
        os.replace(staging, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def png_bytes(pixels: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array encoded as an RGB PNG file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def append_line(target: str | Path, line: str) -> None:
    """Add one line to a small log file (JSONL histories) atomically: the file is rewritten whole,
    so a reader sees it with or without the new line, never half of it."""
    target = Path(target)
    old = target.read_text() if target.exists() else ""
    write_text(target, old + line.rstrip("\n") + "\n")


def read_json(path: str | Path) -> dict:
    """The JSON written by write_json at ``path``, {} where there is none yet (a stage that has not
    run): what every reader of another stage's optional report does."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def write_npz(target: str | Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(target, buf.getvalue())


def write_parquet(target: str | Path, frame) -> None:
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dir_hash(directory: Path) -> str:
    """sha256 over a saved model's weight and config files (names and bytes): the provenance of its
    samples. ``training.json`` (timings) is left out: the same weights give the same hash."""
    h = hashlib.sha256()
    for f in sorted(directory.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt", ".pt") and f.name != "training.json":
            h.update(str(f.relative_to(directory)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


class Checkpoint:
    """One resumable checkpoint file, written atomically after each epoch."""

    def __init__(self, path: Path, device):
        self.path, self.device = Path(path), device

    def load(self) -> dict | None:
        import torch

        return torch.load(self.path, map_location=self.device, weights_only=True) if self.path.exists() else None

    def save(self, payload: dict) -> None:
        import torch

        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
