"""Print the latest test metrics and how to look at the runs: python -m pipeline_lib.summary"""

from __future__ import annotations

import json
import sys

from .config import Paths


def summary(paths: Paths) -> str:
    if not paths.metrics.exists():
        return f"No metrics yet ({paths.metrics} missing): run `make run` or `dvc repro`."
    m = json.loads(paths.metrics.read_text())
    lines = [f"Test accuracy {m['accuracy']:.1%}   macro-F1 {m['macro_f1']:.3f}   ({m['n_test']} test images)"]
    if "ci" in m:
        (alo, ahi), (flo, fhi) = m["ci"]["accuracy"], m["ci"]["macro_f1"]
        lines.append(f"{m['ci']['level']:.0%} bootstrap CI: accuracy {alo:.1%}–{ahi:.1%}, macro-F1 {flo:.3f}–{fhi:.3f}")
    models = m.get("models") or {}
    sel = m.get("selection") or {}
    if sel.get("mode") == "cv":
        lines.append(f"Model: {m['candidate']}, chosen by {sel['folds']}-fold cross-validation x {sel['repeats']} "
                     f"on all {sel['n_labelled']} labelled images and refitted on them: head {sel['winner']} "
                     f"({sel['reason']})")
        if "finetune" in sel:
            lines.append(f"  {sel['finetune']['reason']}")
        pseudo = sel.get("pseudo_labels") or {}
        if pseudo:
            right = pseudo.get("pseudo_label_accuracy")
            lines.append(f"  self-training: {pseudo['pseudo_labels']} of {pseudo['unlabeled']} unlabelled images "
                         "pseudo-labelled" + (f" ({right:.0%} right)" if right is not None else ""))
    elif len(models) > 1:
        lines.append(f"Model: {m['candidate']} (chosen on val: " + ", ".join(
            f"{n} {v['val_accuracy']:.1%}" for n, v in models.items()) + ")")
    if len(models) > 1:
        lines.append("On test, for reference (not used to choose): " + ", ".join(
            f"{n} {v['test_accuracy']:.1%}" for n, v in models.items())
            + (f" (McNemar p={m['comparison']['mcnemar_p']:.3f})" if "comparison" in m else ""))
    for name, row in (m.get("baselines") or {}).items():
        lines.append(f"Baseline without real labels, {name.replace('_', ' ')}: {row['test_accuracy']:.1%}")
    worst = sorted(m["per_class"].items(), key=lambda kv: kv[1]["recall"])[:3]
    lines.append("Hardest classes (recall): " + ", ".join(f"{c} {v['recall']:.0%}" for c, v in worst))
    for pair in m.get("top_confusions", [])[:3]:
        lines.append(f"  {pair['actual']} taken for {pair['predicted']}: {pair['count']}x")
    lines += [
        f"Reports: {paths.reports_dir}/ (metrics.json, confusion_matrix.png, ingest.json)",
        f"MLflow UI: mlflow ui --backend-store-uri {paths.mlflow_uri}   then open http://127.0.0.1:5000",
        "(from the project root `.venv/bin/mlflow ui` is enough: sqlite:///mlflow.db is the default)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Paths.for_root(sys.argv[1] if len(sys.argv) > 1 else None)))
