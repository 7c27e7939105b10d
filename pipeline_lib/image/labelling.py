"""How an image reaches Label Studio: an address its local-file serving answers, or the PNG inline."""

from __future__ import annotations

import base64
import os
from urllib.parse import quote

from ..errors import PipelineError


def image_address(paths, path: str, label) -> str:
    """``/data/local-files/?d=<path under the server's document root>`` (label.images: local_files),
    or a ``data:image/png;base64,…`` URI (inline)."""
    file = paths.resolve(path).resolve()
    if label.images == "inline":
        return "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode("ascii")
    root = paths.resolve(label.document_root).resolve()
    if root == file.parent or root not in file.parents:
        raise PipelineError(f"label.document_root {root} does not hold {file} (and must not be its folder): set it to "
                            "the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, a folder above data/prepared "
                            "(make label-studio uses the project folder), or set label.images: inline")
    return "/data/local-files/?d=" + quote(os.path.relpath(file, root))
