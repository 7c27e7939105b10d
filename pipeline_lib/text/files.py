"""Text items on disk: one UTF-8 text per file (``<id>.txt``, named by the hash of the normalised
text), their ids and the UTF-8 checks ingest and predict apply (normalisation itself lives in
text_normalize, which the logged model ships)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import PipelineError

TEXT_EXTENSIONS = (".txt",)


def text_id(text: str) -> str:
    """Content id of a normalised text (the same length as an image's)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def read_text(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")


UTF8_FIX = ("save the file as UTF-8 (in a spreadsheet: CSV UTF-8; or "
            "`iconv -f latin1 -t utf-8 in.csv > out.csv`)")


def not_utf8(raw: bytes) -> str | None:
    """Why ``raw`` is not UTF-8 ("line 3 is not UTF-8 (byte 0xe9 at offset 57)"), or None."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return f"line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    return None


def decode_utf8(raw: bytes, where: str) -> str:
    """UTF-8 text (a byte-order mark dropped), or one line naming the line of the first bad byte."""
    reason = not_utf8(raw)
    if reason:
        raise PipelineError(f"{where}: {reason}. Fix: {UTF8_FIX}.")
    return raw.decode("utf-8-sig")
