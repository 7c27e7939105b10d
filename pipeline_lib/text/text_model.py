"""The deployable text classifier as an MLflow pyfunc model (models from code): the sentence
encoder's folder, the head as a torch.export program and the class names are the model's
artifacts; this file and text_normalize.py are the model's code.

It imports nothing else from the project, so a logged model loads anywhere with torch,
sentence-transformers and mlflow installed; training (ingest) and serving normalise texts with the
same function. The project never imports this module: tracking logs it by path.

Input: a DataFrame with a ``text`` column. Output: a DataFrame with ``label`` (the predicted
class), ``confidence`` and one probability column per class, in the order of classes.json.
"""

from __future__ import annotations

import json

import mlflow

try:  # in a logged model: the file beside this one (code_paths)
    from text_normalize import normalize_text
except ImportError:  # in the project
    from pipeline_lib.text.text_normalize import normalize_text


class TextClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        with open(context.artifacts["settings"], encoding="utf-8") as fh:
            settings = json.load(fh)
        self.classes, self.batch_size = settings["classes"], settings.get("batch_size", 64)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = SentenceTransformer(context.artifacts["encoder"], device=device, local_files_only=True)
        self.encoder.max_seq_length = settings["max_length"]
        self.head = torch.export.load(context.artifacts["head"]).module()  # on the CPU: the vectors come back

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        texts = [normalize_text(str(t)) for t in model_input["text"]]
        vectors = self.encoder.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                      show_progress_bar=False)
        with torch.no_grad():
            proba = torch.softmax(self.head(vectors.float().cpu()), dim=1).numpy()
        out = pd.DataFrame(proba, columns=self.classes)
        out.insert(0, "confidence", proba.max(axis=1))
        out.insert(0, "label", [self.classes[i] for i in proba.argmax(axis=1)])
        return out


mlflow.models.set_model(TextClassifier())
