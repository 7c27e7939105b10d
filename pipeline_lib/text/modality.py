"""Texts as a modality (pipeline_lib.modality.Modality): what every stage needs from text data, each
piece delegated to the text module that does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BadItem
from ..modality import Modality
from . import synthesis
from .files import TEXT_EXTENSIONS, UTF8_FIX, not_utf8, read_text, text_id
from .text_normalize import normalize_text


class TextModality(Modality):
    name = "text"
    noun = "text"
    one = "a text file"
    folder = "texts"
    suffix = ".txt"
    extensions = TEXT_EXTENSIONS
    inline_column = "text"
    generators = synthesis.GENERATORS

    # ---- items
    def inline_items(self, frame: pd.DataFrame) -> list | None:
        """A manifest with a `text` column holds the texts themselves."""
        return [str(t) for t in frame["text"]] if "text" in frame.columns else None

    def load(self, source, params) -> tuple[str, dict]:
        """The text of a file (UTF-8) or of a manifest row, normalised (NFC, whitespace collapsed)."""
        if isinstance(source, Path):
            data = source.read_bytes()
            if not_utf8(data):
                raise BadItem(not_utf8(data), UTF8_FIX)
            raw = data.decode("utf-8-sig")
        else:
            raw = source
        text = normalize_text(raw)
        if not text:
            raise BadItem("empty text (nothing but whitespace)" if raw else "empty text",
                          "write the text in the row (or remove the row)")
        return text, self.fields(text)

    def content_id(self, item: str) -> str:
        return text_id(item)

    def read(self, path: Path) -> str:
        return read_text(path)

    def write(self, path: Path, item: str) -> None:
        path.write_bytes(item.encode("utf-8"))  # the bytes atomic.write_text would write

    def fields(self, item: str) -> dict:
        return {"height": 0, "width": 0, "orig_mode": "text", "note": ""}

    def augment(self, item, params, seed: int):
        from .augmentation import augment_text

        return augment_text(item, params.augment.text, seed)

    def augment_preview(self, train, params, paths) -> None:
        from .augmentation import preview

        preview(train, params, paths)

    def synthetic_preview(self, frame, train, classes, params, paths) -> None:
        synthesis.preview(frame, train, classes, params, paths)

    def show(self, paths, row) -> str:
        """The text itself."""
        return read_text(paths.resolve(row["path"]))

    label_studio_tag = "Text"

    def label_studio_value(self, paths, path: str, params) -> str:
        """The text itself, inline in the task."""
        return read_text(paths.resolve(path))

    def quote(self, path: Path) -> str | None:
        return read_text(path)[:300]

    # ---- encoders
    def encoder_names(self, params) -> list[str]:
        return [params.text.encoder]

    def load_encoder(self, params, root, name: str):
        from .encoder import load_text_encoder

        return load_text_encoder(name, params.text.max_length, root)

    def encoder_spec(self, params, name: str) -> dict:
        return {"name": name, "modality": "text", "max_length": params.text.max_length}

    def feature_notes(self, encoder, files: list[Path]) -> dict:
        """How many texts are longer than the encoder's window (only their first max_length tokens count)."""
        tokens = encoder.token_counts([read_text(f) for f in files]) if files else np.zeros(0, int)
        long = int((tokens > encoder.max_length).sum())
        return {"max_length": encoder.max_length, "texts_truncated": long,
                "tokens_median": int(np.median(tokens)) if len(tokens) else 0,
                "tokens_max": int(tokens.max()) if len(tokens) else 0,
                "truncation": (f"{long} of {len(tokens)} texts are longer than {encoder.max_length} tokens: only their "
                               f"first {encoder.max_length} tokens are encoded (text.max_length)") if long else "none"}

    # ---- tuning the encoder
    def finetune(self, params, paths, manifest, n_classes, device, checkpoint):
        """Contrastive tuning of the sentence encoder (no epochs history)."""
        from .finetune import run

        return run(params, paths, manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"],
                   n_classes, device, checkpoint), []

    def finetuned_probabilities(self, params, paths, rows, name) -> dict:
        """The contrastively tuned encoder and its head, on each split's texts."""
        if not paths.finetuned_head.exists():
            return {}
        from ..heads import load_head, predict_proba
        from .encoder import encode, load_sentence_model, texts_of

        head, meta = load_head(paths.finetuned_head, paths.finetune_meta)
        from ..runtime import pick_device

        model = load_sentence_model(paths.finetuned_encoder, meta["backbone_spec"].get("max_length"),
                                    str(pick_device(params.runtime.device)))
        return {"finetune": {split: predict_proba(head, encode(model, texts_of(paths, frame)))
                             for split, frame in rows.items()}}

    def zero_shot(self, params, paths, manifest, classes, y_test) -> dict:
        from .zero_shot import text_zero_shot

        return {"zero_shot": text_zero_shot(params, paths, classes, y_test)}

    # ---- the deployable model
    def deploy(self):
        from . import deploy

        return deploy


TEXT = TextModality()
__all__ = ["TEXT", "TextModality"]
