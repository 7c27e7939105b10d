"""What must hold before DVC looks at the data: DVC hashes ``data.path`` (a dependency of ingest)
before any stage runs, so a path that does not exist fails there with a bare ``[Errno 2]``, and a
named pipe in the data folder makes it wait forever. ``check`` finds both first and says, in one
line each, which path and what to do; `make run` (flows.pipeline), `python -m tasks.prefect_server
dvc repro` and the retrain flow call it before DVC. (A plain `dvc repro` cannot be intercepted:
README.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import Params
from .errors import PipelineError
from .paths import Paths

SPECIAL = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
           (stat.S_ISBLK, "a block device"))


def check(params: Params, paths: Paths) -> None:
    """Raise a PipelineError naming the first problem DVC would trip on, if any."""
    folders = []
    if params.data.source in ("folder", "manifest"):
        path = paths.resolve(params.data.path)
        if not path.exists():
            what = "data folder" if params.data.source == "folder" else "manifest"
            raise PipelineError(f"{what} {path} (data.path) does not exist: fix data.path in params.yaml, or put your "
                                "data there. DVC hashes it before any stage runs, so `dvc repro` would stop with a "
                                "bare [Errno 2].")
        folders.append(path if path.is_dir() else path.parent)
    if params.data.unlabeled:
        folders.append(paths.resolve(params.data.unlabeled))
    for folder in folders:
        special = first_special_file(folder)
        if special is not None:
            f, kind = special
            raise PipelineError(f"{f} is {kind}: DVC would wait on it forever while hashing the data folder. "
                                "Remove it (ingest would reject it anyway).")


def first_special_file(folder: Path) -> tuple[Path, str] | None:
    """The first named pipe, socket or device under ``folder`` (links not followed), and what it is."""
    for top, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            mode = os.lstat(os.path.join(top, name)).st_mode
            for test, kind in SPECIAL:
                if test(mode):
                    return Path(top) / name, kind
    return None
