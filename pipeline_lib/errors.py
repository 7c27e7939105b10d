"""User-facing errors: a message that says what is wrong, where, and how to fix it."""

from __future__ import annotations

import errno

# an OSError with one of these will fail again however often it is retried
_PERMANENT_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
                     errno.EINVAL, errno.ENOENT, errno.EEXIST}


class PipelineError(Exception):
    """A mistake in the user's input or set-up (not a bug).

    Entry points print the message without a traceback and exit with status 2.
    """

    exit_code = 2


class BadItem(Exception):
    """An item (an image, a text, ...) that cannot be used: the reason, and how to fix it; ingest
    reports both, predict lists the item as skipped."""

    def __init__(self, reason: str, fix: str):
        super().__init__(reason)
        self.reason, self.fix = reason, fix


class TransientError(PipelineError):
    """A failure that may pass if tried again: an I/O error of a flaky or full file system, a
    tracking server that does not answer. The Prefect tasks retry these (with backoff), only these."""


def io_error(message: str, exc: OSError) -> PipelineError:
    """The error to raise for a failed read/write: transient unless its errno says it cannot pass."""
    return (PipelineError if exc.errno in _PERMANENT_ERRNOS else TransientError)(message)


def is_transient(exc: BaseException | None) -> bool:
    if isinstance(exc, TransientError):
        return True
    return isinstance(exc, OSError) and exc.errno is not None and exc.errno not in _PERMANENT_ERRNOS


def is_unreachable(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) says the tracking server did not answer."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = f"{type(exc).__name__}: {exc}"
        if any(word in text for word in ("ConnectionError", "Connection refused", "Max retries exceeded",
                                         "RemoteDisconnected", "ConnectTimeout", "ReadTimeout",
                                         "Connection aborted", "Connection reset", "Connection broken")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
