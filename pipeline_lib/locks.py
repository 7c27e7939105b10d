"""One writer at a time: an advisory file lock (fcntl.flock) around a whole pipeline run.

The lock file holds who has it (pid, host, start time) so the refusal can say so. The kernel
releases the lock when the holder exits, however it exits (a SIGKILLed run leaves no stale lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from .errors import PipelineError


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str = "a pipeline run", wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold ``lock_path`` exclusively; refuse (PipelineError) if another process holds it for longer
    than ``wait_seconds``."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(lock_path)
                    raise PipelineError(
                        f"another {what} is in progress ({holder}; lock {lock_path}). Two runs must not write the "
                        "same outputs at once: wait for it to finish (or pass --wait SECONDS), or stop it.") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
