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


def decide(challenger_acc: float, champion_acc: float | None, margin: float,
           comparable: bool = True) -> tuple[bool, str]:
    """Promote when there is no champion (or one for the other modality), or the challenger is
    ahead by at least ``margin``."""
    if not comparable:
        return True, "the champion classifies the other modality (images vs texts): replaced"
    if champion_acc is None:
        return True, "no champion yet"
    gap = challenger_acc - champion_acc
    if gap >= margin:
        return True, f"challenger {challenger_acc:.4f} beats champion {champion_acc:.4f} by {gap:+.4f} >= margin {margin}"
    return False, f"challenger {challenger_acc:.4f} vs champion {champion_acc:.4f}: {gap:+.4f} < margin {margin}"


def score_model_on_test(model_uri: str, paths: Paths) -> float | None:
    """Accuracy of a logged classifier on the current test split, from the prepared images or
    texts; None when it classifies the other modality (images vs texts: no comparison possible)."""
    import mlflow
    import torch

    from .backbones import Preprocess, load_batch
    from .dataset import is_text

    info = mlflow.models.get_model_info(model_uri)
    manifest = pd.read_parquet(paths.manifest)
    test = manifest[manifest["split"] == "test"]
    if (info.metadata or {}).get("modality", "image") != ("text" if is_text(manifest) else "image"):
        return None
    if is_text(manifest):
        from .text import read_text

        out = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": [read_text(paths.resolve(p))
                                                                                 for p in test["path"]]}))
        return float(np.mean(out["label"].to_numpy() == test["label"].to_numpy()))
    classes = list(info.metadata["classes"])
    resolution = int(info.metadata["resolution"])
    model = mlflow.pytorch.load_model(model_uri)
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
    promoted, reason = decide(challenger_acc, champion_acc, params.mlflow.promotion_margin,
                              comparable=champion is None or champion_acc is not None)
    # the aliases move only now, after the version is fully logged and registered
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return Decision(promoted=promoted, reason=reason, challenger_version=str(version),
                    challenger_accuracy=challenger_acc,
                    champion_version=str(champion.version) if champion else None,
                    champion_accuracy=champion_acc)


def describe_version(params: Params, decision: Decision, classes: list[str], metrics: dict, tags: dict,
                     text: bool = False) -> None:
    """Say in the registry what the model is and how good: the registered model's description (task,
    classes, input contract, how to load), the version's description and tags (scores, data
    version, commit, the promotion decision)."""
    import mlflow

    name, version = params.mlflow.model_name, decision.challenger_version
    client = mlflow.MlflowClient()
    res = params.backbone.resolution
    aliases = f"Aliases: `{CHAMPION}` (deployed), `{CHALLENGER}` (the latest trained)."
    client.update_registered_model(name, description=(
        f"Text classifier over {len(classes)} classes: {', '.join(classes)}.\n\n"
        "Input: a DataFrame with a `text` column. Output: a DataFrame with `label`, "
        "`confidence` and one probability column per class.\n\n"
        f"Load: `mlflow.pyfunc.load_model('models:/{name}@{CHAMPION}')`. " + aliases) if text else (
        f"Image classifier over {len(classes)} classes: {', '.join(classes)}.\n\n"
        f"Input: float32 RGB tensor (N, 3, H, W) with values in [0, 1], any H and W (resized inside to "
        f"{res}x{res}). Output: class probabilities (N, {len(classes)}) in the order of `classes.json`.\n\n"
        f"Load: `mlflow.pytorch.load_model('models:/{name}@{CHAMPION}')`, or predict on a folder of "
        f"images with `python -m flows.predict <folder>` (the champion by default). " + aliases))
    ci = (metrics.get("ci") or {}).get("accuracy")
    client.update_model_version(name, version, description=(
        f"{metrics.get('candidate', '?')}: test accuracy {metrics['accuracy']:.1%}"
        + (f" ({ci[0]:.1%}–{ci[1]:.1%})" if ci else "") + f", macro-F1 {metrics['macro_f1']:.3f} on "
        f"{metrics.get('n_test', '?')} test {'texts' if text else 'images'}. "
        f"{'Promoted' if decision.promoted else 'Not promoted'}: {decision.reason}."))
    version_tags = {"test_accuracy": f"{metrics['accuracy']:.4f}", "test_macro_f1": f"{metrics['macro_f1']:.4f}",
                    "candidate": metrics.get("candidate", "?"), "promoted": str(decision.promoted).lower(),
                    "promotion_reason": decision.reason, **tags}
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
