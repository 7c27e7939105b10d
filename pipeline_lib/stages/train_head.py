"""Stage train_head: choose the head recipe (and flip TTA) on every labelled image, then fit it.

Mode "cv" (no val split; see pipeline_lib.selection): every recipe in train_head.kinds x
train_head.C, with and without flip TTA, is scored by repeated stratified k-fold over the
labelled images; the winner is refitted on all of them. Mode "holdout" (a val split exists, many
labels): each recipe is fitted on train and scored on val, as before. The selection table goes to
reports/selection.json; the winner's out-of-fold (or val) probabilities to models/head_oof.npz,
where finetune and evaluate find them.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import atomic, modalities
from ..config import Params
from ..dataset import load_manifest
from ..errors import PipelineError
from ..features import featurized_backbones
from ..heads import HeadRecipe, predict_proba, recipes, save_head
from ..paths import Paths
from ..selection import Fold, best, bias_corrected, mean_oof, oof_matrix, summarise, tie_margin, top_scorer, undecidable
from ..training_set import TTA, TrainingSet, fit_recipe


def cross_validate(data: TrainingSet, folds: list[Fold], params: Params, n_classes: int, prefix: str = ""
                   ) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Selection table (scores of every candidate's pooled out-of-fold probabilities, mean and
    spread over repeats) and each candidate's out-of-fold probabilities, averaged over repeats."""
    repeats = max(f.repeat for f in folds) + 1
    table, oof_by_name = {}, {}
    for recipe in recipes(params.train_head, data.U is not None and len(data.U) > 0):
        plain, tta = oof_matrix(len(data.y), n_classes, repeats), oof_matrix(len(data.y), n_classes, repeats)
        for fold in folds:
            held = fold.held
            val = (data.X[held], data.y[held]) if data.mode == "holdout" else None
            head, _ = fit_recipe(data, fold.train, recipe, params, n_classes, params.seed + fold.fold, val)
            plain[fold.repeat][held] = predict_proba(head, data.X[held])
            if data.X_flip is not None:
                tta[fold.repeat][held] = (plain[fold.repeat][held] + predict_proba(head, data.X_flip[held])) / 2
        variants = [(prefix + recipe.name, plain)] + ([(prefix + recipe.name + TTA, tta)] if data.X_flip is not None else [])
        for name, oof in variants:
            table[name] = {**summarise(data.y, oof, n_classes), "recipe": recipe.as_dict(), "tta": name.endswith(TTA),
                           "backbone": data.backbone}
            oof_by_name[name] = mean_oof(oof)
    return table, oof_by_name


def _reason(table: dict[str, dict], winner: str, metric: str, mode: str, tie_se: float) -> str:
    """Why the winner won, in a line: the best score and the runner-up, or the tie rule."""
    row, top = table[winner], top_scorer(table, metric)
    if top != winner:
        return (f"{mode} {metric} {row[metric]:.3f} ± {row[metric + '_std']:.3f}, within {tie_se:g} SE "
                f"(±{tie_margin(table[top], metric, tie_se):.3f}) of the best, {top} {table[top][metric]:.3f}, "
                "and the best of those with its neighbouring C values")
    runner_up = sorted((n for n in table if n != winner), key=lambda n: table[n][metric], reverse=True)[:1]
    return (f"best {mode} {metric} {row[metric]:.3f} ± {row[metric + '_std']:.3f}"
            + (f" (next: {runner_up[0]} {table[runner_up[0]][metric]:.3f})" if runner_up else ""))


def run(params: Params, paths: Paths) -> dict:
    _, classes = load_manifest(paths)
    names = featurized_backbones(paths)  # backbone.name's candidates, or text.encoder for texts
    sets = {name: TrainingSet(params, paths, name) for name in names}
    data = sets[names[0]]
    missing = [c for i, c in enumerate(classes) if not ((data.y == i).any() or (data.y_syn == i).any())]
    if missing:
        raise PipelineError(
            f"class(es) {missing} have no training image, real or synthetic (data.zero_shot_classes need "
            "generated ones): set synthetic.generator: stable_diffusion with a local model, or drop them. "
            "The CLIP zero-shot baseline (evaluate.zero_shot_model) scores such classes without training.")
    if len(data.y) == 0:
        raise PipelineError("train_head: no labelled image (check data.* params and the ingest report)")
    metric = params.selection.metric
    too_few = undecidable(data.y) if data.mode == "cv" else None
    if too_few:  # decide nothing on empty folds: the default recipe, said to be untested
        recipe = default_recipe(params)
        return _fit_and_write(params, paths, data, classes, recipe, False, {}, {
            "mode": "none", "metric": metric, "winner": recipe.name, "backbone": data.backbone, "folds": 0,
            "repeats": 0, "reason": f"{too_few}; the default recipe {recipe.name} is used, untested", "table": {}}, 0.0)
    started = time.perf_counter()
    folds = data.folds(params)  # the same folds for every backbone: paired comparisons
    table, oof = {}, {}
    for name, candidate in sets.items():
        part, part_oof = cross_validate(candidate, folds, params, len(classes), f"{name} · " if len(names) > 1 else "")
        table.update(part)
        oof.update(part_oof)
    winner = best(table, metric, params.selection.tie_se)
    scored = ~np.isnan(oof[winner][:, 0])
    data = sets[table[winner]["backbone"]]
    listed = list(table)
    # the winner's score is the best of len(table) noisy scores: corrected is what choosing this way scores
    corrected = bias_corrected(data.y[scored], np.stack([oof[n][scored] for n in listed]), len(classes), metric,
                               params.seed, listed.index(winner))
    selection = {"mode": data.mode, "metric": metric, "winner": winner, "backbone": data.backbone,
                 "folds": len({f.fold for f in folds}), "repeats": len({f.repeat for f in folds}),
                 "reason": _reason(table, winner, metric, data.mode, params.selection.tie_se),
                 f"{metric}_corrected": corrected["score_corrected"], "optimism": corrected["optimism"],
                 "synthetic_left_out_of_folds": int(data.syn_derived.sum()), "table": table}
    atomic.write_npz(paths.head_oof, y=data.y[scored], proba=oof[winner][scored].astype(np.float32))
    report = _fit_and_write(params, paths, data, classes, HeadRecipe(**table[winner]["recipe"]), table[winner]["tta"],
                            {f"cv_{metric}": table[winner][metric], f"cv_{metric}_std": table[winner][metric + "_std"],
                             "cv_accuracy": table[winner]["accuracy"], f"cv_{metric}_corrected":
                             corrected["score_corrected"], "cv_optimism": corrected["optimism"],
                             "candidates": len(table)}, selection, time.perf_counter() - started)
    with atomic.atomic_path(paths.selection_table) as tmp:
        pd.DataFrame([{"candidate": n, **{k: r[k] for k in ("accuracy", "accuracy_std", "macro_f1", "macro_f1_std",
                                                          "log_loss")}} for n, r in table.items()]
                     ).to_csv(tmp, index=False)
    return report


def default_recipe(params: Params) -> HeadRecipe:
    """What is fitted when nothing can be chosen: the first listed kind, a linear head at the listed C
    nearest scikit-learn's default 1."""
    options = recipes(params.train_head)
    linear = [r for r in options if r.kind == "linear"]
    return min(linear, key=lambda r: abs(np.log10(r.C))) if linear else options[0]


def _fit_and_write(params: Params, paths: Paths, data: TrainingSet, classes: list[str], recipe: HeadRecipe, tta: bool,
                   scores: dict, selection: dict, cv_seconds: float) -> dict:
    """Refit the chosen recipe on every labelled item (or train in holdout mode), save the head and
    write the selection report and the stage report."""
    refit = np.arange(len(data.y)) if data.mode == "cv" else np.arange(data.n_train)
    X, y, _ = data.training(refit)
    val = (data.X[data.n_train:], data.y[data.n_train:]) if data.mode == "holdout" else None
    started = time.perf_counter()
    head, pseudo = fit_recipe(data, refit, recipe, params, len(classes), params.seed, val)
    seconds = time.perf_counter() - started
    spec = modalities.of_dataset(paths).encoder_spec(params, data.backbone)
    meta = {"classes": classes, "backbone": params.backbone.model_dump(), "seed": params.seed,
            "backbone_spec": spec, "recipe": recipe.as_dict(), "tta": tta}
    save_head(head, paths.head, paths.head_meta, meta)
    if selection["mode"] == "none":
        atomic.write_npz(paths.head_oof, y=np.zeros(0, np.int64), proba=np.zeros((0, len(classes)), np.float32))
        with atomic.atomic_path(paths.selection_table) as tmp:
            pd.DataFrame(columns=["candidate", "accuracy", "accuracy_std", "macro_f1", "macro_f1_std",
                                  "log_loss"]).to_csv(tmp, index=False)
    atomic.write_json(paths.selection_report, {**selection, "recipe": recipe.as_dict(), "tta": tta,
                                               "n_labelled": int(len(data.y)), "refit_on": int(len(refit)),
                                               "pseudo_labels": pseudo})
    report = {
        "selection_mode": selection["mode"], "winner": selection["winner"], "backbone": data.backbone, **scores,
        "cv_seconds": round(cv_seconds, 3), "train_seconds": round(seconds, 3),
        **{k: v for k, v in pseudo.items() if v is not None},
        "train_accuracy": float((predict_proba(head, X).argmax(1) == y).mean()),
        "n_train": int(len(X)), "n_train_real": int(len(refit)), "n_train_synthetic": int(len(data.y_syn)),
        "n_val": int(len(data.y) - data.n_train),
    }
    atomic.write_json(paths.train_head_report, report)
    return report
