"""What a modality is: the base class every kind of data implements (images, texts, or one a plugin
adds), and ``Generation``, what a synthetic-data generator returns. The registry that knows them
all is pipeline_lib.modalities.

A modality says everything the stages need from it: which files and manifest columns hold its
items, how an item is read, checked, normalised, named by its content and written; its
augmentation and preview; its encoders; its fine-tuning runner; its synthetic generators and
zero-shot row; its deployable MLflow model (log, load, predict); how an item is shown in reports.
The defaults say "none": no augmentation, no generators, no fine-tuning, no zero-shot row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import BadItem  # noqa: F401 - raised by Modality.load


@dataclass
class Generation:
    """What a synthetic-data generator returns: the generated items (each with ``item``,
    ``label_idx``, ``prompt``, ``seed``), the generator's model hash (provenance), and facts for
    the synthesize report."""

    items: list
    model_hash: str = ""
    info: dict = field(default_factory=dict)


class Modality:
    """What the stages need from one kind of data. Subclasses set the attributes and override the
    methods their data has; the defaults are the honest "this modality has none"."""

    name: str = ""  # recorded by ingest and in the logged model's metadata
    noun: str = "item"  # for sentences: "12 test items"
    folder: str = "items"  # sub-folder of data/prepared, data/augmented, data/synthetic
    suffix: str = ""  # one file per item, named <content id><suffix>
    extensions: tuple[str, ...] = ()  # source files this modality reads (folders, a manifest's `path` rows)
    inline_column: str = ""  # the manifest column that holds the items themselves ("text"), if one does
    mirror_tta: bool = False  # a mirror image exists (flip test-time augmentation)
    one: str = "an item"  # one item, in messages: "an image", "a text file"

    @property
    def nouns(self) -> str:
        return self.noun + "s"

    # ---- items: ingest, augment, synthesize -------------------------------------------------------
    def inline_items(self, frame: pd.DataFrame) -> list | None:
        """The items of a manifest CSV whose rows hold them (a `text` column), or None when this
        modality does not read such a table (then the `path` column names files)."""
        return None

    def load(self, source: Path | Any, params) -> tuple[Any, dict]:
        """A usable item from a source file (a Path) or an inline value, and its manifest fields
        (height, width, orig_mode, note); BadItem when it cannot be used."""
        raise NotImplementedError

    def content_id(self, item) -> str:
        raise NotImplementedError

    def read(self, path: Path):
        raise NotImplementedError

    def write(self, path: Path, item) -> None:
        """Write an item into a stage's staging folder (atomic.replace_dir swaps the whole folder in
        on success): a plain write. A temporary file and an fsync per item would cost a scan of
        the folder each (atomic.sweep_stale): quadratic in the number of items."""
        raise NotImplementedError

    def fields(self, item) -> dict:
        """The manifest fields of an item made by the pipeline (augmented or synthetic)."""
        return {"height": 0, "width": 0, "orig_mode": self.name, "note": ""}

    def augment(self, item, params, seed: int):
        """A seeded augmented copy (augment stage); the item itself when the modality has none."""
        return item

    def augment_preview(self, train: pd.DataFrame, params, paths) -> None:
        from .plots import plot_message

        plot_message(f"No augmentation for {self.nouns}.", paths.augment_preview)

    #: synthetic.generator name -> callable(params, paths, train, classes, device) -> Generation
    generators: dict[str, Callable] = {}

    def synthetic_preview(self, frame: pd.DataFrame, train: pd.DataFrame, classes: list[str], params, paths) -> None:
        from .plots import plot_message

        plot_message(f"No synthetic {self.nouns}." if frame.empty else
                     f"{int(frame['kept'].sum())} synthetic {self.nouns} kept.", paths.synthetic_preview)

    def show(self, paths, row) -> str:
        """How an item is shown in reports (advise's CSVs): its original file by default."""
        source = row.get("source")
        return str(source) if isinstance(source, str) and source else str(row["path"])

    def quote(self, path: Path) -> str | None:
        """An item quoted in evaluate's report beside the confusions it takes part in (a text's
        start), or None: the item is not quoted (an image)."""
        return None

    # ---- labelling in Label Studio: python -m flows.label -----------------------------------------
    #: the Label Studio object tag that shows an item ("Image", "Text"); None: not labelled there
    label_studio_tag: str | None = None

    def label_studio_value(self, paths, path: str, params) -> str:
        """What a task holds for the prepared item at ``path``: the tag's value."""
        raise NotImplementedError

    def label_studio_folder(self, paths, params) -> Path | None:
        """A folder the server must be allowed to serve files from (a local storage), or None."""
        return None

    # ---- encoders: featurize, train_head ----------------------------------------------------------
    def encoder_names(self, params) -> list[str]:
        raise NotImplementedError

    def load_encoder(self, params, root: Path | None, name: str):
        """The frozen encoder ``name`` (pipeline_lib.encoder.Encoder)."""
        raise NotImplementedError

    def encoder_spec(self, params, name: str) -> dict:
        """What rebuilds the encoder (stored in models/head.json by train_head)."""
        return {"name": name, "modality": self.name}

    def feature_notes(self, encoder, files: list[Path]) -> dict:
        """Extra facts for featurize's report (a text encoder: how many texts it truncates)."""
        return {}

    # ---- fine-tuning: finetune, evaluate ----------------------------------------------------------
    def finetune(self, params, paths, manifest: pd.DataFrame, n_classes: int, device, checkpoint):
        """Fine-tune (or tune) the encoder: (report, per-epoch history rows), or None when the
        modality has nothing to fine-tune."""
        return None

    def resume_inputs(self, params, paths) -> list[str]:
        """Inputs beyond the params, the manifests and the head that a fine-tuning checkpoint must
        match to be resumed (images: the DANN target files)."""
        return []

    def finetuned_probabilities(self, params, paths, rows: dict[str, pd.DataFrame], name: str | None) -> dict:
        """Val and test probabilities of the fine-tuned model(s) ({} when there is none): model name
        ("finetune", "finetune_tta") -> split -> array, for the rows of each split."""
        return {}

    def zero_shot(self, params, paths, manifest: pd.DataFrame, classes: list[str], y_test: np.ndarray) -> dict:
        """evaluate's zero-shot rows (no label used): row name -> result; {} when none applies."""
        return {}

    # ---- the deployable model: evaluate (log), registry, predict ----------------------------------
    def deploy(self):
        """The module that holds this modality's deployable model: ``log_model``,
        ``model_description``, ``load_model``, ``read_inputs``, ``predict``, ``predict_prepared``
        (the methods below call it); None: the subclass overrides those methods itself."""
        return None

    def _deployer(self):
        module = self.deploy()
        if module is None:
            raise NotImplementedError(f"the {self.name} modality has no deployable model: give it deploy() or "
                                      "override log_model, load_model, read_inputs, predict and predict_prepared")
        return module

    def log_model(self, params, paths, metrics: dict):
        """Log the deployed classifier to the active MLflow run: (model info, classes). Its
        metadata must carry ``modality: <name>`` and ``classes``."""
        return self._deployer().log_model(params, paths, metrics)

    def model_description(self, name: str, classes: list[str], params) -> str:
        """The registered model's description: the input contract and how to load it."""
        module = self.deploy()
        if module is None:
            return f"{self.noun.capitalize()} classifier over {len(classes)} classes: {', '.join(classes)}. "
        return module.model_description(name, classes, params)

    def load_model(self, model_uri: str, dst: str):
        return self._deployer().load_model(model_uri, dst)

    def read_inputs(self, source: Path) -> list:
        """What predict's ``source`` holds for this modality."""
        return self._deployer().read_inputs(source)

    def predict(self, loaded, inputs: list, batch_size: int, top_k: int) -> tuple[pd.DataFrame, list[dict]]:
        """(the predictions table, the skipped inputs with reason and fix) for predict."""
        return self._deployer().predict(loaded, inputs, batch_size, top_k)

    def predict_prepared(self, model, metadata: dict, files: list[Path]) -> np.ndarray:
        """A loaded model's predicted class names for prepared items (the registry scores the
        champion on the current test split)."""
        return self._deployer().predict_prepared(model, metadata, files)
