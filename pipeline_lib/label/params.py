"""The params.yaml section of the labelling loop (python -m flows.label push | pull); ingest reads
`label.folder`, the rest only the loop. pipeline_lib.config composes it."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from ..params_base import Section


class LabelParams(Section):
    """The labelling loop with Label Studio: push what advise suggests, pull the answers as versioned
    data (docs/labelling.md). The server's token is read from LABEL_STUDIO_API_KEY, never from here."""

    url: str = "http://127.0.0.1:8080"
    """Label Studio's address (`make label-studio` starts one here)"""
    project: str = ""
    """title of the project of items to label (default "<mlflow.model_name>: label next"); `push --review` uses
    this title + ": review" for the suspicious labels"""
    folder: str = "data/labels"
    """where `pull` writes the labels it brings back: label_studio.csv (DVC-tracked, read by ingest) and
    rounds.jsonl (one line per pull: counts, and the forecast it is checked against)"""
    images: Literal["local_files", "inline"] = "local_files"
    """how images reach Label Studio: `local_files` (the server reads data/prepared; needs local-file serving, as
    `make label-studio` sets up) | `inline` (each image copied into its task: any server, small images)"""
    document_root: str = "."
    """the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, relative to the project (images: local_files)"""

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("an http:// or https:// address, e.g. http://127.0.0.1:8080")
        return value.rstrip("/")

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a folder path, e.g. data/labels")
        return value
