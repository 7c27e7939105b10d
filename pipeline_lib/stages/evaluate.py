"""Stage evaluate: test accuracy, macro-F1, per-class precision/recall, confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from .. import atomic, modalities
from ..config import Params
from ..dataset import load_manifest
from ..features import load_features, load_flipped
from ..heads import load_head, predict_proba
from ..paths import Paths
from ..plots import plot_confusion, plot_reliability
from ..stats import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    fit_temperature_on_proba,
    nll,
    reliability_bins,
    rescale,
)


def _examples(confusions: list[dict], modality, paths: Paths, manifest: pd.DataFrame, ids, actual, predicted,
              confidence, n: int = 2) -> None:
    """Each worst-confused pair gets its most confidently wrong test items, quoted as the modality
    quotes them (a text's start; an image is not quoted)."""
    where = manifest.set_index("item_id")["path"]
    for pair in confusions:
        rows = np.flatnonzero((actual == pair["actual"]) & (predicted == pair["predicted"]))
        rows = rows[np.argsort(-confidence[rows], kind="stable")][:n]
        quotes = [modality.quote(paths.resolve(where[ids[i]])) for i in rows]
        if any(q is not None for q in quotes):
            pair["examples"] = quotes


def top_confusions(cm: np.ndarray, classes: list[str], k: int) -> list[dict]:
    off = [(int(cm[i, j]), classes[i], classes[j]) for i in range(len(classes)) for j in range(len(classes))
           if i != j and cm[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"actual": a, "predicted": p, "count": n} for n, a, p in off[:k]]


def calibrate(val_proba: np.ndarray, y_val: np.ndarray, test_proba: np.ndarray, y_test: np.ndarray,
              target, fitted_on: str = "val") -> dict:
    """ECE on test before and after temperature scaling fitted on val (or, in CV mode, the
    out-of-fold predictions); reliability diagram PNG.

    Log-probabilities serve as logits (softmax(log p / T) is temperature scaling of the logits).
    """
    temperature = fit_temperature_on_proba(val_proba, y_val)
    scaled = rescale(test_proba, temperature)
    result = {"temperature": temperature, "temperature_fitted_on": fitted_on, "ece": expected_calibration_error(test_proba, y_test),
              "ece_temperature_scaled": expected_calibration_error(scaled, y_test),
              "nll": nll(test_proba, y_test), "nll_temperature_scaled": nll(scaled, y_test)}
    plot_reliability({f"as trained (ECE {result['ece']:.3f})": reliability_bins(test_proba, y_test),
                      f"T={temperature:.2f} (ECE {result['ece_temperature_scaled']:.3f})":
                          reliability_bins(scaled, y_test)},
                     target, title=f"reliability on test; temperature fitted on {fitted_on}")
    return result


def model_probabilities(params: Params, paths: Paths) -> dict[str, dict[str, np.ndarray]]:
    """Val and test class probabilities of every trained model, in the feature files' row order:
    "head", "finetune" (when enabled) and, with evaluate.tta, each one's flip-averaged variant
    ("head_tta" from the mirror images' cached features, "finetune_tta" through the network)."""
    head, meta = load_head(paths.head, paths.head_meta)
    name = (meta.get("backbone_spec") or {}).get("name")
    splits = ("val", "test")
    out = {"head": {split: predict_proba(head, load_features(paths, split, name)[0]) for split in splits}}
    flipped = {split: load_flipped(paths, split, name) for split in splits}
    if params.evaluate.tta == "hflip" and all(f is not None for f in flipped.values()):
        out["head_tta"] = {split: (out["head"][split] + predict_proba(head, flipped[split])) / 2 for split in splits}
    manifest = load_manifest(paths)[0].set_index("item_id")
    rows = {split: manifest.loc[list(load_features(paths, split, name)[2])].reset_index() for split in splits}
    out.update(modalities.of_dataset(paths).finetuned_probabilities(params, paths, rows, name))
    return out


def paired_comparison(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on the discordant pairs: do two models' test errors differ?"""
    from ..stats import mcnemar

    test = mcnemar(correct_a, correct_b)
    return {"only_first_correct": test["only_first_correct"], "only_second_correct": test["only_second_correct"],
            "mcnemar_p": test["p_value"]}


def choose_candidate(val_scores: dict[str, tuple[float, float]], monitor: str = "val_loss") -> str:
    """The better model on val, by the criterion finetune monitors (val loss, or val accuracy with
    ties to the lower loss); never chosen on test. On ties the first (simpler) model wins."""
    if monitor == "val_loss":
        return min(val_scores, key=lambda name: val_scores[name][1])
    return max(val_scores, key=lambda name: (val_scores[name][0], -val_scores[name][1]))


def baselines(params: Params, paths: Paths, manifest: pd.DataFrame, classes: list[str], y_test: np.ndarray) -> dict:
    """Test accuracy without real labels: the modality's zero-shot row (texts: the class
    descriptions; images: CLIP, when evaluate.zero_shot_model names one), and the synthetic-only
    nearest class mean."""
    from ..dataset import SYNTHETIC
    from ..features import nearest_class_mean

    out = modalities.of_dataset(paths).zero_shot(params, paths, manifest, classes, y_test)
    if paths.features(SYNTHETIC).exists():
        X_syn, y_syn, _ = load_features(paths, SYNTHETIC)
        if len(X_syn):
            X_test = load_features(paths, "test")[0]
            pred = nearest_class_mean(X_syn, y_syn, X_test, len(classes))
            out["synthetic_only"] = {"test_accuracy": float((pred == y_test).mean()), "n_reference": int(len(X_syn)),
                                     "classes_without_images": [c for i, c in enumerate(classes)
                                                                if not (y_syn == i).any()]}
    return out


def selection_summary(paths: Paths) -> dict:
    """How the deployed recipe was chosen: the head table of train_head and finetune's decision."""
    import json

    sel = json.loads(paths.selection_report.read_text())
    table = {name: {k: row[k] for k in ("accuracy", "accuracy_std", "macro_f1", "macro_f1_std", "log_loss")}
             for name, row in sel["table"].items()}
    out = {k: sel[k] for k in ("mode", "metric", "winner", "backbone", "tta", "folds", "repeats", "n_labelled",
                               "refit_on", "reason")}
    out.update({k: sel[k] for k in (f"{sel['metric']}_corrected", "optimism") if k in sel}, table=table)
    if sel.get("pseudo_labels"):
        out["pseudo_labels"] = sel["pseudo_labels"]
    if paths.finetune_report.exists():
        ft = json.loads(paths.finetune_report.read_text())
        if ft.get("enabled"):
            out["finetune"] = {k: ft[k] for k in ("mode", "kept", "reason", "best_epoch", "wise_alpha", "gain",
                                                  "gain_se", "gain_naive", "keep_level", "folds") if k in ft}
    return out


def chosen_by_cv(paths: Paths, names) -> str:
    """CV mode: fine-tuned if its CV decision kept it, else the head; with flip TTA when the head's
    CV chose it (whether mirroring preserves the class is a property of the data, decided on the
    cheap head)."""
    import json

    tta = json.loads(paths.head_meta.read_text()).get("tta", False)
    base = "finetune" if "finetune" in names else "head"
    return f"{base}_tta" if tta and f"{base}_tta" in names else base


def oof_probabilities(paths: Paths, candidate: str) -> tuple[np.ndarray, np.ndarray]:
    """(y, probabilities) out of fold for the candidate's recipe: what calibration is fitted on in CV mode."""
    source = paths.finetune_oof if candidate.startswith("finetune") else paths.head_oof
    with np.load(source) as npz:
        return npz["y"], npz["proba"]


def run(params: Params, paths: Paths) -> dict:
    manifest, classes = load_manifest(paths)
    _, y_val, _ = load_features(paths, "val")
    _, y, item_ids = load_features(paths, "test")
    probas = model_probabilities(params, paths)
    cv_mode = len(y_val) == 0
    val_scores = {name: (float((p["val"].argmax(1) == y_val).mean()) if len(y_val) else 0.0,
                         nll(p["val"], y_val) if len(y_val) else 0.0) for name, p in probas.items()}
    candidate = chosen_by_cv(paths, probas) if cv_mode else choose_candidate(val_scores, params.finetune.monitor)
    models = {}
    for name, p in probas.items():
        pred_m = p["test"].argmax(1)
        models[name] = {**({} if cv_mode else {"val_accuracy": val_scores[name][0], "val_loss": val_scores[name][1]}),
                        "test_accuracy": float((pred_m == y).mean()),
                        "test_macro_f1": classification_metrics(y, pred_m, classes)["macro_f1"]}
    proba = probas[candidate]["test"]
    pred = proba.argmax(1)
    metrics = classification_metrics(y, pred, classes)
    metrics.update(candidate=candidate, models=models, selection=selection_summary(paths))
    if "finetune" in probas:
        metrics["comparison"] = {"first": "head", "second": "finetune", **paired_comparison(
            probas["head"]["test"].argmax(1) == y, probas["finetune"]["test"].argmax(1) == y)}
    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    metrics["top_confusions"] = top_confusions(cm, classes, params.evaluate.top_confusions)
    _examples(metrics["top_confusions"], modalities.of_dataset(paths), paths, manifest, item_ids, np.array(classes)[y],
              np.array(classes)[pred], proba.max(1))
    if params.evaluate.bootstrap:
        metrics["ci"] = {"level": params.evaluate.ci_level, "resamples": params.evaluate.bootstrap,
                         **bootstrap_ci(y, pred, len(classes), params.evaluate.bootstrap,
                                        params.evaluate.ci_level, params.seed)}
    metrics["baselines"] = baselines(params, paths, manifest, classes, y)
    fit_y, fit_proba = oof_probabilities(paths, candidate) if cv_mode else (y_val, probas[candidate]["val"])
    metrics["calibration"] = calibrate(fit_proba, fit_y, proba, y, paths.reliability_png,
                                       "out-of-fold predictions" if cv_mode else "val")
    if cv_mode:  # say which: the temperature of a proxy, not of the deployed model itself
        folds = (metrics["selection"].get("finetune") or {}).get("folds") or 2
        metrics["calibration"]["temperature_note"] = (
            f"fitted on the out-of-fold predictions of the {folds}-fold fine-tuning runs (each trained "
            "on part of the labels, without flip TTA), a proxy for the model refitted on all of them"
            if candidate.startswith("finetune") else
            "fitted on the head recipe's out-of-fold predictions (averaged over the CV repeats"
            + (", with flip TTA)" if candidate.endswith("_tta") else ")") + ", a proxy for the head refitted on all labels")

    atomic.write_json(paths.metrics, metrics)
    names = np.array(classes)
    with atomic.atomic_path(paths.predictions) as tmp:
        pd.DataFrame({"item_id": item_ids, "actual": names[y], "predicted": names[pred],
                      "confidence": proba.max(1).round(6)}).to_csv(tmp, index=False)
    with atomic.atomic_path(paths.per_class_csv) as tmp:
        pd.DataFrame(metrics["per_class"]).T.rename_axis("class").reset_index().to_csv(tmp, index=False)
    plot_confusion(cm, classes, paths.confusion_png,
                   title=f"{candidate}: test accuracy {metrics['accuracy']:.1%}, macro-F1 {metrics['macro_f1']:.3f}")
    return metrics
