"""The modality registry: one table that knows each kind of data the pipeline can learn from
(pipeline_lib.modality.Modality: images, texts, or one a plugin adds). The stages ask it and never
branch on the kind of data.

Ingest decides the modality once and records it in the prepared data (``data/prepared/dataset.json``);
every later stage, predict and the registry read it back (``of_dataset``). A logged model carries its
modality in its MLflow metadata (``of_model``).

Adding a modality: subclass Modality, fill in what your data has, and ``register`` an instance from
a module imported before the stages run: an installed package's entry point in the group
``transfer_pipeline.modalities``, or a module named in the environment variable
``PIPELINE_MODALITIES`` (comma-separated; `dvc repro` passes the environment to every stage).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pandas as pd

from .errors import PipelineError
from .modality import Modality

DATASET_FILE = "dataset.json"  # in data/prepared: {"modality": name} (ingest writes it)
PLUGINS_ENV = "PIPELINE_MODALITIES"
ENTRY_POINTS = "transfer_pipeline.modalities"

_REGISTRY: dict[str, Modality] = {}
_loaded = False


def register(modality: Modality) -> Modality:
    """Add (or replace) a modality in the registry, after the built-in ones; returns it."""
    if not modality.name:
        raise ValueError("a modality needs a name")
    _load_plugins()
    _REGISTRY[modality.name] = modality
    return modality


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from .image.modality import IMAGE
    from .text.modality import TEXT

    for builtin in (IMAGE, TEXT):
        _REGISTRY.setdefault(builtin.name, builtin)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        ep.load()
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PipelineError(f"{PLUGINS_ENV}: cannot import the modality module {module!r} ({exc}); "
                                "check the name, or that its folder is on PYTHONPATH") from None


def modalities() -> list[Modality]:
    """Every registered modality, built-ins first."""
    _load_plugins()
    return list(_REGISTRY.values())


def get(name: str) -> Modality:
    _load_plugins()
    if name not in _REGISTRY:
        raise PipelineError(f"no modality {name!r} is registered (known: {', '.join(_REGISTRY)}); a plugin "
                            f"modality must be importable: set {PLUGINS_ENV}=<module> or install its package")
    return _REGISTRY[name]


def nouns(name: str | None) -> str:
    """What a data set of modality ``name`` holds, for sentences ("images"); "items" for a modality
    that is not registered here (a report written with a plugin that is not loaded)."""
    try:
        return get(name or "image").nouns
    except PipelineError:
        return "items"


def for_file(path: Path) -> Modality | None:
    """The modality that reads files with this extension, or None."""
    suffix = path.suffix.lower()
    return next((m for m in modalities() if suffix in m.extensions), None)


def extensions() -> tuple[str, ...]:
    return tuple(e for m in modalities() for e in m.extensions)


def record(prepared_dir: Path, modality: Modality) -> None:
    """Ingest's decision, written once into the prepared data."""
    from . import atomic

    atomic.write_json(prepared_dir / DATASET_FILE, {"modality": modality.name})


def of_dataset(paths) -> Modality:
    """The modality ingest recorded for the prepared data. Data prepared before the record existed
    is told by its manifest (every row of a text data set has orig_mode "text")."""
    recorded = paths.prepared_dir / DATASET_FILE
    if recorded.exists():
        return get(json.loads(recorded.read_text())["modality"])
    if not paths.manifest.exists():
        raise PipelineError(f"{paths.manifest} not found: run the ingest stage first (dvc repro ingest).")
    manifest = pd.read_parquet(paths.manifest, columns=["orig_mode"])
    return get("text" if len(manifest) and (manifest["orig_mode"] == "text").all() else "image")


def of_model(metadata: dict | None) -> Modality:
    """The modality of a logged model (models logged before the key existed are image models)."""
    return get((metadata or {}).get("modality", "image"))


__all__ = ["register", "modalities", "get", "nouns", "for_file", "extensions", "record",
           "of_dataset", "of_model"]
