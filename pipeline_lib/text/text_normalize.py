"""How every text is normalised, in training (ingest) and in the logged model (which ships this
file as its code): standard library only."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Unicode NFC, every run of whitespace (newlines, tabs, no-break spaces) one space, other
    control characters dropped, trimmed."""
    spaced = _SPACES.sub(" ", unicodedata.normalize("NFC", text))
    return "".join(ch for ch in spaced if unicodedata.category(ch) != "Cc").strip()
