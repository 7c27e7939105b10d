"""A third modality, added in tests only, to prove the registry's seam: ``vectors``.

A data set is a CSV whose columns are numbers (one feature each) plus ``label`` (and optionally
``split``); the encoder is the identity (a vector is its own feature); there is no fine-tuning,
augmentation or synthetic generator. The deployable model is an MLflow pyfunc model that takes a
DataFrame of the same numeric columns. Registered from this module alone: no stage module knows
it (tests/test_modality_plugin.py runs it through the real `dvc repro` with
``PIPELINE_MODALITIES=<this module>``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline_lib import atomic, modalities
from pipeline_lib.dataset import read_manifest
from pipeline_lib.errors import BadItem, PipelineError
from pipeline_lib.modality import Modality
from pipeline_lib.paths import Paths
from pipeline_lib.prediction import columns, table

RESERVED = {"label", "split"}


def _numeric(frame: pd.DataFrame) -> list[str] | None:
    """The feature columns of a table whose every other column is numeric, else None."""
    features = [c for c in frame.columns if c not in RESERVED]
    if not features:
        return None
    try:
        frame[features].astype(float)
    except ValueError:
        return None
    return features


class IdentityEncoder:
    """The Encoder interface for vectors: each .npy file's numbers are its feature vector."""

    name = "identity"
    weights_sha256 = "none"

    def __init__(self, dim: int):
        self.feature_dim = dim
        self.model, self.preprocess = nn.Identity(), nn.Identity()

    @property
    def key(self) -> str:
        return f"identity-{self.feature_dim}"

    def to(self, device, precision="auto") -> "IdentityEncoder":
        return self

    def embed(self, items, batch_size, device=None, desc="featurize") -> np.ndarray:
        return np.stack([np.load(f) for f in items]).astype(np.float32) if len(items) else \
            np.zeros((0, self.feature_dim), np.float32)

    def blocks(self) -> list[nn.Module]:
        return []


class VectorsClassifier(mlflow.pyfunc.PythonModel):
    """The deployed vectors classifier: the head (a torch.export program) on the raw columns."""

    def load_context(self, context) -> None:
        with open(context.artifacts["settings"], encoding="utf-8") as fh:
            settings = json.load(fh)
        self.classes, self.columns = settings["classes"], settings["columns"]
        self.head = torch.export.load(context.artifacts["head"]).module()

    def predict(self, context, model_input, params=None):
        X = torch.from_numpy(model_input[self.columns].to_numpy(np.float32))
        with torch.no_grad():
            proba = torch.softmax(self.head(X), dim=1).numpy()
        out = pd.DataFrame(proba, columns=self.classes)
        out.insert(0, "confidence", proba.max(axis=1))
        out.insert(0, "label", [self.classes[i] for i in proba.argmax(axis=1)])
        return out


class VectorsModality(Modality):
    name = "vectors"
    noun = "vector"
    one = "a vector"
    folder = "vectors"
    suffix = ".npy"

    def inline_items(self, frame):
        features = _numeric(frame)
        return None if features is None else list(frame[features].to_numpy(np.float32))

    def load(self, source, params):
        vector = np.asarray(source, np.float32)
        if not np.isfinite(vector).all():
            raise BadItem("a missing or infinite value", "give every feature column a number")
        return vector, self.fields(vector)

    def content_id(self, item) -> str:
        return hashlib.sha256(np.ascontiguousarray(item, np.float32).tobytes()).hexdigest()[:32]

    def read(self, path: Path):
        return np.load(path)

    def write(self, path: Path, item) -> None:
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(item, np.float32))

    def fields(self, item) -> dict:
        return {"height": 1, "width": int(len(item)), "orig_mode": "vectors", "note": ""}

    def encoder_names(self, params) -> list[str]:
        return ["identity"]

    def load_encoder(self, params, root, name: str):
        manifest = read_manifest(Paths.for_root(root).manifest)  # the width ingest recorded: the vector length
        return IdentityEncoder(int(manifest["width"].iloc[0]))

    def log_model(self, params, paths, metrics):
        from pipeline_lib.heads import load_head

        head, meta = load_head(paths.head, paths.head_meta)
        features = _numeric(pd.read_csv(paths.resolve(params.data.path), nrows=1))
        with tempfile.TemporaryDirectory() as tmp:
            program = torch.export.export(head.eval(), (torch.zeros(2, head.config["in_dim"]),),
                                          dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
            torch.export.save(program, f"{tmp}/head.pt2")
            atomic.write_json(Path(tmp) / "settings.json", {"classes": meta["classes"], "columns": features})
            info = mlflow.pyfunc.log_model(
                name="model", python_model=VectorsClassifier(), code_paths=[__file__],
                artifacts={"head": f"{tmp}/head.pt2", "settings": f"{tmp}/settings.json"},
                metadata={"classes": meta["classes"], "modality": self.name, "columns": features})
        return info, meta["classes"]

    def load_model(self, model_uri: str, dst: str):
        return mlflow.pyfunc.load_model(model_uri, dst_path=dst)

    def read_inputs(self, source: Path) -> list:
        frame = pd.read_csv(source)
        features = _numeric(frame)
        if features is None:
            raise PipelineError(f"predict: {source} is not a table of numeric columns")
        return [(f"{source}:{i + 2}", row) for i, row in enumerate(frame[features].to_dict("records"))]

    def predict(self, loaded, inputs, batch_size, top_k):
        k = max(1, min(top_k, len(loaded.classes)))
        out = loaded.model.predict(pd.DataFrame([row for _, row in inputs]))
        rows = table(loaded, out[loaded.classes].to_numpy(np.float64), [w for w, _ in inputs], k, "source")
        return pd.DataFrame(rows, columns=columns("source", k)), []

    def predict_prepared(self, model, metadata, files):
        frame = pd.DataFrame(np.stack([np.load(f) for f in files]), columns=metadata["columns"])
        return model.predict(frame)["label"].to_numpy().astype(str)


VECTORS = modalities.register(VectorsModality())
