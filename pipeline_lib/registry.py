"""MLflow model registry: the new model becomes `challenger`; it is promoted to `champion` only when
a paired test on the same test items (McNemar's exact test, one-sided) says it makes fewer errors
than the current champion at ``mlflow.promotion_level``. A tie is never promoted; models that
predict other classes (or the other modality) are never compared. Aliases, not stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .config import Params
from .paths import Paths
from .stats import mcnemar

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    challenger_version: str
    challenger_accuracy: float
    champion_version: str | None = None
    champion_accuracy: float | None = None
    test: dict = field(default_factory=dict)  # which test, on which items, its counts and p-value

    def as_dict(self) -> dict:
        return asdict(self)


def decide(challenger_correct: np.ndarray | None, champion_correct: np.ndarray | None, level: float,
           comparable: str | None = None) -> tuple[bool, str, dict]:
    """Promote when there is no champion, when the champion answers another task (``comparable``
    says why: other classes or modality), or when the challenger is right on significantly more of
    the same test items than the champion (McNemar's exact test, one-sided, at ``level``)."""
    if comparable:
        return True, f"{comparable}: it cannot be compared, the new model replaces it", {}
    if champion_correct is None:
        return True, "no champion yet", {}
    test = {"test": "McNemar exact, one-sided (challenger makes fewer errors)", "level": level,
            **mcnemar(champion_correct, challenger_correct, "greater")}
    wins, losses, p = test["only_second_correct"], test["only_first_correct"], test["p_value"]
    counts = (f"on the same {test['n']} test items the challenger alone is right on {wins}, the champion alone "
              f"on {losses}")
    if wins > losses and p < level:
        return True, f"challenger better: {counts}, p = {p:.3g} < {level:g}", test
    why = "a tie is never promoted" if wins == losses else f"p = {p:.3g}, needs < {level:g}"
    return False, f"challenger not shown better: {counts}; {why}", test


def predictions_on_test(model_uri: str, paths: Paths) -> tuple[np.ndarray | None, str | None]:
    """A logged classifier's predicted labels on the current test split, in the manifest's order
    (from the prepared items, by the model's modality); or None and why it cannot answer this task
    (it classifies another modality, or other classes)."""
    import tempfile

    import mlflow

    from . import modalities
    from .dataset import load_manifest

    info = mlflow.models.get_model_info(model_uri)
    metadata = info.metadata or {}
    manifest, ours = load_manifest(paths)
    test = manifest[manifest["split"] == "test"]
    theirs, this = modalities.of_model(metadata), modalities.of_dataset(paths)
    if theirs.name != this.name:
        return None, f"the champion classifies {theirs.nouns}, this model {this.nouns}"
    classes = list(metadata.get("classes") or [])
    if sorted(classes) != sorted(ours):
        return None, (f"the champion predicts other classes ({', '.join(classes[:8])}) than this model "
                      f"({', '.join(ours[:8])})")
    with tempfile.TemporaryDirectory(prefix="registry-model-") as scratch:
        model = this.load_model(model_uri, scratch)
        return this.predict_prepared(model, metadata, [paths.resolve(p) for p in test["path"]]), None


def register_and_promote(model_uri: str, params: Params, paths: Paths, challenger_acc: float,
                         data_version: str | None = None) -> Decision:
    import mlflow

    name = params.mlflow.model_name
    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, name).version
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        champion = None
    from .dataset import read_manifest

    test = read_manifest(paths.manifest).query("split == 'test'")
    truth = test["label"].to_numpy().astype(str)
    champion_pred, why_not = predictions_on_test(f"models:/{name}@{CHAMPION}", paths) if champion else (None, None)
    # the logged model scored again only when there is a champion to compare it with, on the same items
    challenger_correct = predictions_on_test(model_uri, paths)[0] == truth if champion_pred is not None else None
    promoted, reason, record = decide(challenger_correct, None if champion_pred is None else champion_pred == truth,
                                      params.mlflow.promotion_level, why_not)
    if record:
        trained_on = (champion.tags or {}).get("data_version")
        record.update(items=f"the current test split ({len(truth)} items, data version {data_version or '?'})",
                      champion_data_version=trained_on)
        if trained_on and data_version and trained_on != data_version:
            reason += f" (both scored on the current test split; the champion was logged at data version {trained_on})"
    # the aliases move only now, after the version is fully logged and registered
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    champion_acc = float(np.mean(champion_pred == truth)) if champion_pred is not None else None
    return Decision(promoted=promoted, reason=reason, challenger_version=str(version),
                    challenger_accuracy=(float(challenger_correct.mean()) if challenger_correct is not None and len(truth)
                                         else challenger_acc),
                    champion_version=str(champion.version) if champion else None,
                    champion_accuracy=champion_acc, test=record)


def describe_version(params: Params, decision: Decision, classes: list[str], metrics: dict, tags: dict,
                     modality) -> None:
    """Say in the registry what the model is and how good: the registered model's description (task,
    classes, input contract, how to load: the modality's), the version's description and tags
    (scores, data version, commit, the promotion decision)."""
    import mlflow

    name, version = params.mlflow.model_name, decision.challenger_version
    client = mlflow.MlflowClient()
    aliases = f"Aliases: `{CHAMPION}` (deployed), `{CHALLENGER}` (the latest trained)."
    client.update_registered_model(name, description=modality.model_description(name, classes, params) + aliases)
    ci = (metrics.get("ci") or {}).get("accuracy")
    client.update_model_version(name, version, description=(
        f"{metrics.get('candidate', '?')}: test accuracy {metrics['accuracy']:.1%}"
        + (f" ({ci[0]:.1%}–{ci[1]:.1%})" if ci else "") + f", macro-F1 {metrics['macro_f1']:.3f} on "
        f"{metrics.get('n_test', '?')} test {modality.nouns}. "
        f"{'Promoted' if decision.promoted else 'Not promoted'}: {decision.reason}."))
    version_tags = {"test_accuracy": f"{metrics['accuracy']:.4f}", "test_macro_f1": f"{metrics['macro_f1']:.4f}",
                    "candidate": metrics.get("candidate", "?"), "promoted": str(decision.promoted).lower(),
                    "promotion_reason": decision.reason, **tags}
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
