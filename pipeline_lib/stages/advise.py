"""Stage advise: the next decision, on the user's own data, from the cached features.

Runs after evaluate and writes reports/advice.md (plus reports/advise.json, the learning-curve PNG,
reports/label_next.csv for a labelling tool and reports/suspect_labels.csv):
1. the learning curve of the deployed head recipe (CV at growing fractions of every label, several
   repeats), an inverse power law fitted to it and extrapolated to 2x and 4x the labels;
2. what to label next among the unlabelled items (dataset.unlabeled_pool), never a labelled or a
   test item;
3. labelled items whose given label the out-of-fold probabilities find least likely, and
   near-duplicates with different labels;
4. data health: class balance, classes at risk, duplicates and leakage from ingest, calibration.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import advise, atomic, modalities
from ..config import Params
from ..dataset import UNLABELED, load_manifest
from ..features import load_features
from ..heads import HeadRecipe, load_head, predict_proba
from ..paths import Paths
from ..plots import plot_learning_curve_fit, plot_message
from ..selection import undecidable


def run(params: Params, paths: Paths) -> dict:
    a = params.advise
    if not a.enabled:
        for f in (paths.advice_md, paths.advice_curve_png, paths.label_next_csv, paths.suspect_labels_csv):
            f.unlink(missing_ok=True)
        report = {"enabled": False}
        atomic.write_json(paths.advise_report, report)
        return report
    started = time.perf_counter()
    manifest, classes = load_manifest(paths)
    head, meta = load_head(paths.head, paths.head_meta)
    name = (meta.get("backbone_spec") or {}).get("name")
    recipe, n_classes, metric = HeadRecipe(**meta["recipe"]), len(classes), params.selection.metric
    parts = [load_features(paths, split, name) for split in ("train", "val")]
    X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(int)
    ids = np.concatenate([p[2] for p in parts])
    rows = manifest.set_index("item_id")
    describe = _describer(paths, rows, modalities.of_dataset(paths))

    deployed = _deployed(paths)
    too_few = undecidable(y)
    curve, fitted, forecast = _curve(params, paths, X, y, recipe, n_classes, too_few, deployed)
    label_next = _label_next(params, paths, head, name, X, y, ids, describe, classes)
    oof = curve.oof if curve is not None else np.full((len(y), n_classes), np.nan)
    suspect_rows = _suspects(paths, y, oof, ids, describe, classes, a.suspects)
    conflicts = [{"first": describe(ids[i])["item"], "second": describe(ids[j])["item"], "labels": [classes[y[i]],
                  classes[y[j]]], "similarity": round(s, 4)}
                 for i, j, s in advise.conflicting_duplicates(X, y, a.duplicate_similarity)[:a.suspects]]

    report = {"enabled": True, "metric": metric, "n_labelled": int(len(y)), "recipe": recipe.name,
              "deployed": deployed, "too_few_labels": too_few,
              "curve": None if curve is None else {
                  "of": f"the head {recipe.name} on the frozen encoder", "sizes": curve.sizes.round(2).tolist(),
                  "scores": curve.scores.round(4).tolist(), "fractions": curve.fractions.tolist(),
                  "repeats": a.repeats},
              "fit": None if fitted is None else {**fitted["params"], "rmse": fitted["rmse"], "level": fitted["level"]},
              "forecast": forecast, "strategy_at_your_size": _strategy(paths),
              "label_next": label_next, "suspects": {**advise.estimated_wrong_labels(y, oof, params.seed),
                                                     "listed": len(suspect_rows)},
              "conflicting_duplicates": conflicts, "health": _health(params, paths, y, classes)}
    report.update({f"expected_{k}": v["predicted"] for k, v in (forecast or {}).items()})  # flat: MLflow metrics
    report["summary"] = _sentences(report)
    report["advise_seconds"] = round(time.perf_counter() - started, 2)
    atomic.write_json(paths.advise_report, report)
    atomic.write_text(paths.advice_md, _markdown(report, suspect_rows, paths))
    return report


def _curve(params: Params, paths: Paths, X: np.ndarray, y: np.ndarray, recipe: HeadRecipe, n_classes: int,
           too_few: str | None, deployed: str):
    """The head's learning curve on the labelled items, its extrapolation and the forecast at 1x,
    2x and 4x the labels (plotted); (None, None, None) when too few labels decide nothing."""
    a, metric = params.advise, params.selection.metric
    if too_few:  # no fold scores anything: no curve, no out-of-fold probabilities
        plot_message(f"No learning curve: {too_few}.", paths.advice_curve_png)
        return None, None, None
    fit = advise.head_fitter(recipe, params.train_head, n_classes)
    curve = advise.learning_curve(X, y, n_classes, fit, a.fractions, a.repeats, params.selection.folds,
                                  params.seed, metric)
    n = len(y)
    marks_at = [n, 2 * n, 4 * n]
    grid = np.unique(np.r_[np.geomspace(curve.sizes.min(), 4 * n, 40), marks_at])
    fitted = advise.extrapolate(curve.sizes, curve.scores, grid.tolist(), params.seed)
    at = {k: fitted["at"].index(float(v)) for k, v in zip(("now", "x2", "x4"), marks_at)}
    forecast = {k: {"labels": marks_at[j], "predicted": fitted["predicted"][i], "low": fitted["low"][i],
                    "high": fitted["high"][i]} for j, (k, i) in enumerate(at.items())}
    plot_learning_curve_fit(curve.sizes, curve.scores, fitted, {
        f["labels"]: (f["predicted"], f["low"], f["high"], k) for k, f in forecast.items()}, metric,
        paths.advice_curve_png, title=f"learning curve of the head {recipe.name} on your {n} labelled items"
        + ("\n(fine-tuning is deployed: it scored above this head in CV)" if deployed == "finetune" else ""))
    return curve, fitted, forecast


def _suspects(paths: Paths, y: np.ndarray, oof: np.ndarray, ids, describe, classes: list[str], listed: int) -> list[dict]:
    """The labels that look wrong (the out-of-fold probabilities disagree), most doubtful first;
    written to suspect_labels.csv."""
    suspects = advise.suspect_labels(y, oof)
    rows = [{"rank": r + 1, **describe(ids[i]), "given_label": classes[y[i]],
             "suggested_label": classes[s], "p_given": round(float(pg), 4), "p_suggested": round(float(ps), 4),
             "flagged": bool(f)}
            for r, (i, s, pg, ps, f) in enumerate(zip(*(suspects[k][:listed] for k in (
                "index", "suggested", "p_given", "p_suggested", "flagged"))))]
    with atomic.atomic_path(paths.suspect_labels_csv) as tmp:
        pd.DataFrame(rows, columns=["rank", "item_id", "item", "path", "given_label", "suggested_label", "p_given",
                                    "p_suggested", "flagged"]).to_csv(tmp, index=False)
    return rows


def _describer(paths: Paths, rows: pd.DataFrame, modality):
    """id -> {"item": the item as the modality shows it (a text; an image's original file);
    "path": the prepared copy}."""
    def describe(item_id: str) -> dict:
        row = rows.loc[item_id]
        return {"item_id": item_id, "item": modality.show(paths, row), "path": str(row["path"])}

    return describe


LABEL_NEXT_COLUMNS = ["rank", "item_id", "item", "path", "suggested_label", "confidence", "margin", "reason"]


def _label_next(params: Params, paths: Paths, head, name, X, y, ids, describe, classes) -> dict:
    """reports/label_next.csv (a header only when there is nothing to suggest: it is a DVC output)."""
    a = params.advise
    U, pool_ids = np.zeros((0, X.shape[1]), np.float32), np.array([], dtype=str)
    if paths.features(UNLABELED).exists():
        U, _, pool_ids = load_features(paths, UNLABELED, name)
    excluded = set(load_features(paths, "test", name)[2]) | set(ids)
    keep = np.array([i not in excluded for i in pool_ids], dtype=bool)
    U, pool_ids = U[keep], pool_ids[keep]
    if not len(U):
        with atomic.atomic_path(paths.label_next_csv) as tmp:
            pd.DataFrame(columns=LABEL_NEXT_COLUMNS).to_csv(tmp, index=False)
        return {"strategy": None, "suggested": 0, "reason": "no unlabelled items (data.unlabeled, or items beyond "
                                                            "data.shots_per_class) that are not labelled or test items"}
    per_class = float(np.median(np.bincount(y, minlength=len(classes))))
    strategy = a.strategy if a.strategy != "auto" else ("typical" if per_class < a.typical_below else "margin")
    proba = predict_proba(head, U)
    chosen = advise.suggest(strategy, X, U, proba, a.label_next, params.seed)
    margin = advise.margins(proba)
    why = {"typical": "typical of a region of your data that no label covers yet",
           "margin": "the model hesitates between {first} and {second}",
           "random": "drawn at random"}[strategy]
    rows = []
    for rank, i in enumerate(chosen):
        top = np.argsort(-proba[i])[:2]
        rows.append({"rank": rank + 1, **describe(pool_ids[i]), "suggested_label": classes[top[0]],
                     "confidence": round(float(proba[i, top[0]]), 4), "margin": round(float(margin[i]), 4),
                     "reason": why.format(first=classes[top[0]], second=classes[top[-1]])})
    with atomic.atomic_path(paths.label_next_csv) as tmp:
        pd.DataFrame(rows, columns=LABEL_NEXT_COLUMNS).to_csv(tmp, index=False)
    return {"strategy": strategy, "suggested": len(rows), "pool": int(len(U)), "median_labels_per_class": per_class}


def _deployed(paths: Paths) -> str:
    """Which model evaluate deployed: "finetune" or "head"."""
    metrics = atomic.read_json(paths.metrics)
    return "finetune" if str(metrics.get("candidate", "head")).startswith("finetune") else "head"


def _strategy(paths: Paths) -> str:
    """Which strategy wins at this size, from finetune's CV decision."""
    ft = atomic.read_json(paths.finetune_report)
    if not ft.get("enabled"):
        return "fine-tuning is off (finetune.enabled: false): the head on the frozen encoder is deployed"
    if ft.get("mode") == "none":
        return "nothing could be decided between fine-tuning and the head with so few labels: the head is deployed"
    gain = ft.get("gain")
    verdict = "fine-tuning wins" if ft.get("kept") else "the head on the frozen encoder wins"
    return f"{verdict} at your size" + (f" (CV gain of fine-tuning {gain:+.3f} ± {ft.get('gain_se', 0):.3f})"
                                        if gain is not None else "")


def _health(params: Params, paths: Paths, y: np.ndarray, classes: list[str]) -> dict:
    counts = np.bincount(y, minlength=len(classes))
    ingest = atomic.read_json(paths.ingest_report)
    featurized = atomic.read_json(paths.featurize_report)
    metrics = atomic.read_json(paths.metrics)
    cal = metrics.get("calibration") or {}
    return {"per_class": dict(zip(classes, counts.tolist())),
            "imbalance": round(float(counts.max() / max(counts.min(), 1)), 2),
            "at_risk": [c for c, k in zip(classes, counts) if k < params.advise.min_per_class],
            "duplicates": int(ingest.get("n_duplicates", 0)), "leakage": int(ingest.get("n_leakage", 0)),
            "near_duplicate_leaks": int(featurized.get("near_duplicate_leaks", 0)),
            "near_duplicate_threshold": featurized.get("near_duplicate_threshold"),
            "rejected": int(ingest.get("n_rejected", 0)),
            "ece": cal.get("ece"), "ece_temperature_scaled": cal.get("ece_temperature_scaled"),
            "temperature": cal.get("temperature")}


def _sentences(r: dict) -> list[str]:
    f, metric = r["forecast"], r["metric"].replace("macro_f1", "macro-F1")
    if f is None:
        out = [r["too_few_labels"][0].upper() + r["too_few_labels"][1:] + "."]
    else:
        of = " for the head on the frozen encoder (fine-tuning, deployed, scored higher)" \
            if r["deployed"] == "finetune" else ""
        out = [f"Doubling your labels ({f['now']['labels']} -> {f['x2']['labels']}) is expected to raise {metric}{of} "
               f"from {f['now']['predicted']:.2f} to about {f['x2']['predicted']:.2f} "
               f"({f['x2']['low']:.2f}-{f['x2']['high']:.2f}); 4x: {f['x4']['predicted']:.2f} "
               f"({f['x4']['low']:.2f}-{f['x4']['high']:.2f})."]
    out.append(r["strategy_at_your_size"][0].upper() + r["strategy_at_your_size"][1:] + ".")
    ln = r["label_next"]
    if ln.get("suggested") and not r["too_few_labels"]:
        out.append(f"Label next: {ln['suggested']} items ({ln['strategy']} strategy) in reports/label_next.csv.")
    s = r["suspects"]
    pairs = len(r["conflicting_duplicates"])
    if r["too_few_labels"]:
        return out + ([f"Label next: {ln['suggested']} items ({ln['strategy']} strategy) in reports/label_next.csv."]
                      if ln.get("suggested") else [])
    wrong = (f"; about {s['estimate']:.0f} are wrong ({s['interval'][0]:.0f}-{s['interval'][1]:.0f}), the rest hard"
             if s.get("estimate") is not None else "")
    out.append(f"{s['flagged']} labelled items have a label the out-of-fold model doubts{wrong} (check the "
               f"{s['listed']} most suspicious in reports/suspect_labels.csv)"
               + (f"; {pairs} near-duplicate pairs have different labels" if pairs else "") + ".")
    h = r["health"]
    if h["at_risk"]:
        out.append(f"Classes at risk (fewer than the minimum labels): {', '.join(h['at_risk'])}.")
    return out


def _markdown(r: dict, suspects: list[dict], paths: Paths) -> str:
    h, f, metric = r["health"], r["forecast"], r["metric"]
    lines = ["# Advice on your data", "", *[f"- {s}" for s in r["summary"]], "",
             "## 1. What more labels would buy", ""]
    if f is None:
        lines += [f"No forecast: {r['too_few_labels']}.", ""]
    else:
        deployed = (" Fine-tuning is deployed and scored higher in CV; its own curve would take a fine-tuning run "
                    "per point, so this curve is the head's." if r["deployed"] == "finetune" else "")
        lines += [f"Cross-validated {metric} of the head recipe ({r['recipe']}) on the frozen encoder at growing "
                  f"fractions of your {r['n_labelled']} labels ({r['curve']['repeats']} repeats), fitted with "
                  f"a − b·n^−c (a = {r['fit']['a']:.3f}, c = {r['fit']['c']:.2f}, RMSE {r['fit']['rmse']:.3f})."
                  f"{deployed}", "",
                  "| labels | expected | interval |", "|---|---|---|",
                  *[f"| {v['labels']} ({k}) | {v['predicted']:.3f} | {v['low']:.3f}–{v['high']:.3f} |"
                    for k, v in f.items()], "", f"![learning curve]({paths.advice_curve_png.name})", ""]
    lines += [r["strategy_at_your_size"][0].upper() + r["strategy_at_your_size"][1:] + ".", "",
              "## 2. What to label next", ""]
    ln = r["label_next"]
    lines.append(f"{ln['suggested']} of {ln['pool']} unlabelled items, strategy `{ln['strategy']}`: "
                 f"`{paths.label_next_csv.name}` (item, suggested label, confidence, reason)."
                 if ln.get("suggested") else f"Nothing suggested: {ln['reason']}.")
    lines += ["", "## 3. Labels that look wrong", ""]
    sus = r["suspects"]
    if sus.get("estimate") is not None:
        lines += [f"{sus['flagged']} labels are flagged (another class reaches its threshold while the given one "
                  f"does not). A label-noise model fitted to the out-of-fold probabilities (a temperature for hard "
                  f"items, a share of labels drawn at random for wrong ones) puts the wrong labels at about "
                  f"{sus['estimate']:.0f} (90 %: {sus['interval'][0]:.0f}–{sus['interval'][1]:.0f}; noise rate "
                  f"{sus['noise_rate']:.1%}); the rest are hard items. The list is ranked, most suspicious first.", ""]
    if suspects:
        lines += ["| rank | item | given | suggested | p(given) | p(suggested) |", "|---|---|---|---|---|---|"]
        lines += [f"| {s['rank']} | {_cell(s['item'])} | {s['given_label']} | {s['suggested_label']} | {s['p_given']:.2f}"
                  f" | {s['p_suggested']:.2f} |" for s in suspects[:10]]
    for c in r["conflicting_duplicates"][:10]:
        lines.append(f"- near-duplicates with different labels ({c['labels'][0]} / {c['labels'][1]}, similarity "
                     f"{c['similarity']:.3f}): {_cell(c['first'])} and {_cell(c['second'])}")
    cal = (f"the deployed model's expected calibration error on test is {h['ece']:.3f} ({h['ece_temperature_scaled']:.3f} "
           f"after temperature scaling, T = {h['temperature']:.2f})" if h.get("ece") is not None else
           "calibration: evaluate has not run")
    lines += ["", "## 4. Data health", "",
              "| class | labels |", "|---|---|", *[f"| {c} | {k} |" for c, k in h["per_class"].items()], "",
              f"- imbalance (largest / smallest class): {h['imbalance']:.1f}",
              f"- classes at risk: {', '.join(h['at_risk']) or 'none'}",
              f"- ingest: {h['duplicates']} duplicates, {h['leakage']} train/test leaks, {h['rejected']} rejected",
              f"- featurize: {h['near_duplicate_leaks']} test items nearly identical to a labelled one (cosine "
              f"similarity > {h['near_duplicate_threshold']}; pairs in reports/featurize.json)",
              f"- {cal}", "", f"Computed in {r.get('advise_seconds', 0):.1f} s from the cached features."]
    return "\n".join(lines) + "\n"


def _cell(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= width else text[:width - 1] + "…"
