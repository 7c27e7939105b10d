"""Print the latest test metrics and how to look at the runs: python -m pipeline_lib.summary"""

from __future__ import annotations

import json
import sys

from . import atomic
from .paths import Paths


def items(paths: Paths) -> str:
    """What the data set holds, for sentences: "images", "texts", ... (ingest's report says)."""
    from . import modalities

    try:
        name = json.loads(paths.ingest_report.read_text()).get("modality")
    except (OSError, ValueError):
        name = None
    return modalities.nouns(name)


def stage_line(stage: str, report: dict, paths: Paths) -> str:
    """One line saying what a stage did, for the console and Prefect's run log."""
    from . import modalities

    r, took = report, f" in {report['wall_seconds']:.1f} s" if "wall_seconds" in report else ""
    noun = modalities.nouns(r["modality"]) if r.get("modality") else items(paths)
    if stage == "ingest":
        c = r.get("counts") or {}
        line = (f"{c.get('train', 0)} train, {c.get('val', 0)} val, {c.get('test', 0)} test {noun} of "
                f"{len(r.get('classes') or [])} classes")
        problems = [f"{r[k]} {what}" for k, what in (("n_rejected", "files rejected"), ("n_duplicates", "duplicates"),
                                                     ("n_leakage", "train/test leaks")) if r.get(k)]
        if problems:
            line += f"; {', '.join(problems)}: see {paths.ingest_report.relative_to(paths.root)}"
    elif stage == "synthesize":
        line = (f"{r.get('kept', 0)} of {r.get('generated', 0)} generated images kept ({r.get('generator')})"
                if r.get("generated") else "no synthetic images (synthetic.generator: none)")
    elif stage == "augment":
        line = f"{r.get('augmented_images', 0)} augmented copies of {r.get('real_train_images', 0)} training {noun}"
    elif stage == "featurize":
        line = (f"{r.get('items', r.get('images', 0))} {noun} through {r.get('backbone')}: {r.get('computed', 0)} computed, "
                f"{r.get('cache_hits', 0)} from the cache")
    elif stage == "train_head" and r.get("selection_mode") == "none":
        line = f"head {r.get('winner')}: untested, too few labels to choose on {r.get('n_train')} {noun}"
    elif stage == "train_head":
        line = (f"head {r.get('winner')}: {r.get('selection_mode')} macro-F1 {r.get('cv_macro_f1', float('nan')):.3f}"
                f" over {r.get('candidates')} candidates on {r.get('n_train')} {noun}"
                + (f" ({r['cv_macro_f1_corrected']:.3f} corrected for the choice)" if "cv_macro_f1_corrected" in r else ""))
    elif stage == "finetune":
        line = r.get("reason") or ("kept" if r.get("kept") else "not kept")
    elif stage == "advise":
        line = (r.get("summary") or ["off (advise.enabled: false)"])[0]
    else:
        line = f"test accuracy {r['accuracy']:.1%}, macro-F1 {r['macro_f1']:.3f} ({r.get('candidate')})"
    return f"{stage}{took}: {line}"


def stage_markdown(stage: str, report: dict, paths: Paths) -> str:
    """A stage's key figures as markdown (a Prefect artifact): its line, then a table of numbers."""
    rows = [(k, v) for k, v in report.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
            and k not in ("started_at", "finished_at") and len(str(v)) < 120]
    table = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows)
    return (f"### {stage}\n\n{stage_line(stage, report, paths)}\n\n| figure | value |\n|---|---|\n{table}\n\n"
            f"Full report: `{paths.stage_report(stage).relative_to(paths.root)}`")


def summary(paths: Paths) -> str:
    if not paths.metrics.exists():
        return f"No metrics yet ({paths.metrics} missing): run `make run` or `dvc repro`."
    m = json.loads(paths.metrics.read_text())
    noun = items(paths)
    lines = [f"Test accuracy {m['accuracy']:.1%}   macro-F1 {m['macro_f1']:.3f}   ({m['n_test']} test {noun})"]
    if "ci" in m:
        (alo, ahi), (flo, fhi) = m["ci"]["accuracy"], m["ci"]["macro_f1"]
        lines.append(f"{m['ci']['level']:.0%} bootstrap CI: accuracy {alo:.1%}–{ahi:.1%}, macro-F1 {flo:.3f}–{fhi:.3f}")
    models = m.get("models") or {}
    sel = m.get("selection") or {}
    if sel.get("mode") == "none":
        lines.append(f"Model: {m['candidate']}: {sel['reason']}")
    elif sel.get("mode") == "cv":
        lines.append(f"Model: {m['candidate']}, chosen by {sel['folds']}-fold cross-validation x {sel['repeats']} "
                     f"on all {sel['n_labelled']} labelled {noun} and refitted on them: head {sel['winner']} "
                     f"({sel['reason']}"
                     + (f"; {sel['metric']} {sel[sel['metric'] + '_corrected']:.3f} once corrected for choosing the best "
                        f"of {len(sel.get('table') or {})}" if sel.get(f"{sel['metric']}_corrected") is not None else "")
                     + ")")
        if "finetune" in sel:
            lines.append(f"  {sel['finetune']['reason']}")
        pseudo = sel.get("pseudo_labels") or {}
        if pseudo:
            right = pseudo.get("pseudo_label_accuracy")
            lines.append(f"  self-training: {pseudo['pseudo_labels']} of {pseudo['unlabeled']} unlabelled {noun} "
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
        example = (pair.get("examples") or [""])[0]
        lines.append(f"  {pair['actual']} taken for {pair['predicted']}: {pair['count']}x"
                     + (f' — e.g. "{example[:90]}{"…" if len(example) > 90 else ""}"' if example else ""))
    advice = atomic.read_json(paths.stage_report("advise"))
    if advice.get("enabled"):
        lines.append(f"Advice ({paths.advice_md.relative_to(paths.root)}):")
        lines += [f"  {sentence}" for sentence in advice["summary"]]
    lines += [
        f"Reports: {paths.reports_dir}/ (metrics.json, confusion_matrix.png, ingest.json)",
    ]
    run = atomic.read_json(paths.mlflow_run)
    if run.get("labelling_round"):
        lines.append(run["labelling_round"]["sentence"])
    if run.get("tracking_uri", "").startswith(("http://", "https://")):
        lines.append(f"MLflow: this run {run['run_url']}")
    else:
        lines.append(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {paths.mlflow_uri}   then open "
                     + (f"{run['run_url']} (this run; all runs: {run['experiment_url']})" if run
                        else "http://127.0.0.1:5000"))
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Paths.for_root(sys.argv[1] if len(sys.argv) > 1 else None)))
