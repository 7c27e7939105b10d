"""The text zero-shot row of evaluate: no label used, each test text goes to the class whose
description it is most similar to."""

from __future__ import annotations

import numpy as np

from ..config import Params
from ..features import load_features
from ..heads import load_head
from ..paths import Paths
from ..stats import classification_metrics


def text_zero_shot(params: Params, paths: Paths, classes: list[str], y_test: np.ndarray) -> dict:
    """No label used: each test text goes to the class whose description ("This text is about
    <data.class_descriptions[c] or the class name>.") its vector is most similar to (cosine; the
    encoder's vectors are unit length)."""
    from .encoder import load_text_encoder

    head_meta = load_head(paths.head, paths.head_meta)[1]
    spec = head_meta["backbone_spec"]
    prompts = [f"This text is about {params.data.class_descriptions.get(c, c.replace('_', ' '))}." for c in classes]
    encoder = load_text_encoder(spec["name"], spec.get("max_length"), paths.root)
    P = encoder.encode(prompts)
    P /= np.linalg.norm(P, axis=1, keepdims=True)
    X = load_features(paths, "test", spec["name"])[0]
    pred = (X / np.linalg.norm(X, axis=1, keepdims=True) @ P.T).argmax(1)
    return {"test_accuracy": float((pred == y_test).mean()),
            "test_macro_f1": classification_metrics(y_test, pred, classes)["macro_f1"], "prompts": prompts}
