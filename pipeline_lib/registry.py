"""MLflow model registry: the new model becomes `challenger`; it is promoted to `champion` only if
it beats the current champion on the same held-out test set by a margin. Aliases, not stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .config import Params, Paths

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    challenger_version: str
    challenger_accuracy: float
    champion_version: str | None = None
    champion_accuracy: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def decide(challenger_acc: float, champion_acc: float | None, margin: float) -> tuple[bool, str]:
    """Promote when there is no champion, or the challenger is ahead by at least ``margin``."""
    if champion_acc is None:
        return True, "no champion yet"
    gap = challenger_acc - champion_acc
    if gap >= margin:
        return True, f"challenger {challenger_acc:.4f} beats champion {champion_acc:.4f} by {gap:+.4f} >= margin {margin}"
    return False, f"challenger {challenger_acc:.4f} vs champion {champion_acc:.4f}: {gap:+.4f} < margin {margin}"


def score_model_on_test(model_uri: str, paths: Paths) -> float:
    """Accuracy of a logged classifier on the current test split, from the prepared images."""
    import mlflow
    import torch

    from .backbones import Preprocess, load_batch

    info = mlflow.models.get_model_info(model_uri)
    classes = list(info.metadata["classes"])
    resolution = int(info.metadata["resolution"])
    model = mlflow.pytorch.load_model(model_uri)
    manifest = pd.read_parquet(paths.manifest)
    test = manifest[manifest["split"] == "test"]
    preprocess = Preprocess(resolution)
    predicted: list[str] = []
    files = [paths.resolve(p) for p in test["path"]]
    with torch.no_grad():
        for i in range(0, len(files), 64):
            proba = model(load_batch(files[i:i + 64], preprocess))
            predicted += [classes[j] for j in proba.argmax(1).tolist()]
    return float(np.mean(np.array(predicted) == test["label"].to_numpy()))


def register_and_promote(model_uri: str, params: Params, paths: Paths, challenger_acc: float) -> Decision:
    import mlflow

    name = params.mlflow.model_name
    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, name).version
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        champion = None
    champion_acc = score_model_on_test(f"models:/{name}@{CHAMPION}", paths) if champion else None
    promoted, reason = decide(challenger_acc, champion_acc, params.mlflow.promotion_margin)
    # the aliases move only now, after the version is fully logged and registered
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return Decision(promoted=promoted, reason=reason, challenger_version=str(version),
                    challenger_accuracy=challenger_acc,
                    champion_version=str(champion.version) if champion else None,
                    champion_accuracy=champion_acc)
