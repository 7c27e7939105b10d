"""MLflow: one parent run per pipeline execution, one nested run per stage.

The parent run holds the headline — test accuracy and macro-F1 with their intervals, the deployed
candidate, the selection table — a markdown description of what was trained on what and why it
won, the train/val/test splits as MLflow datasets, one ``data_version`` tag, ``dvc.lock`` and
``params.yaml``, evaluate's plots and the deployable classifier (registered as ``challenger``).
Each stage's run holds that stage's own params (its dvc.yaml params, switched-off parts left out),
the figures of its report, its artifacts, and the times it really ran (stamped on its report by
``stages.run_stage``); a stage DVC found up to date shows the run that made its outputs.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
import warnings
from datetime import datetime
from pathlib import Path

import yaml

from . import atomic
from .config import Params
from .errors import PipelineError, TransientError, is_unreachable
from .label import rounds
from .paths import Paths
from .stages import STAGES

LOGGED_BY_EVALUATE = STAGES[:STAGES.index("evaluate") + 1]  # advise runs after and adds its own child run
PIPELINE, STAGE = "pipeline", "stage"  # values of the run_kind tag: filter runs by kind in the UI
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3 opens such an experiment in its training view
SPLITS_CONTEXT = {"train": "training", "val": "validation", "test": "test"}


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def data_version(paths: Paths) -> str:
    """The version of the prepared data: the md5 DVC recorded for ``data/prepared`` in dvc.lock, or,
    without DVC, the md5 of the prepared manifest."""
    if paths.dvc_lock.exists():
        lock = yaml.safe_load(paths.dvc_lock.read_text()) or {}
        for out in ((lock.get("stages") or {}).get("ingest") or {}).get("outs") or []:
            if out.get("path") == "data/prepared" and "md5" in out:
                return str(out["md5"]).removesuffix(".dir")
    if paths.manifest.exists():
        return hashlib.md5(paths.manifest.read_bytes()).hexdigest()
    return "unknown"


def metric_key(name: str) -> str:
    """A name MLflow accepts as a metric key (letters, digits, _ - . / space and :); the real names
    stay in the JSON artifacts."""
    return re.sub(r"[^\w.\-/ :]+", "_", name)



def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def report_metrics(report: dict) -> dict[str, float]:
    """A stage report's figures: its numbers, and the numbers one level down ({"counts": {...}})."""
    out = {}
    for key, value in report.items():
        if _number(value):
            out[metric_key(key)] = float(value)
        elif isinstance(value, dict):
            out.update({metric_key(f"{key}.{k}"): float(v) for k, v in value.items() if _number(v)})
    return out


def headline_metrics(metrics: dict) -> dict[str, float]:
    """What the parent run shows, under the same names in every run: test scores with their
    intervals, calibration, each class's recall and precision, the selection table's CV scores."""
    out = {f"test_{k}": float(metrics[k]) for k in ("accuracy", "macro_f1") if k in metrics}
    for key, value in (metrics.get("ci") or {}).items():
        if isinstance(value, list):
            out[f"test_{key}_ci_low"], out[f"test_{key}_ci_high"] = map(float, value)
    for key, value in (metrics.get("calibration") or {}).items():
        if _number(value):
            out[f"test_calibration.{key}"] = float(value)
    for cls, row in (metrics.get("per_class") or {}).items():
        out.update({metric_key(f"test_{k}/{cls}"): float(row[k]) for k in ("recall", "precision") if _number(row.get(k))})
    selection = metrics.get("selection") or {}
    for name, row in (selection.get("table") or {}).items():
        key = metric_key("cv/" + name.replace(" + flip TTA", " tta").replace("linear C=", "linear_C"))
        out[key] = row[selection["metric"]]
        out[f"{key}_std"] = row[selection["metric"] + "_std"]
    if "n_labelled" in selection:
        out["n_labelled"] = selection["n_labelled"]
    if "n_test" in metrics:
        out["n_test"] = metrics["n_test"]
    return out


def evaluate_metrics(metrics: dict) -> dict[str, float]:
    """Evaluate's own figures: every candidate's scores, the baselines, the paired test."""
    out = {metric_key(f"{name}.{key}"): value for name, scores in (metrics.get("models") or {}).items()
           for key, value in scores.items() if _number(value)}
    out.update({metric_key(f"baseline.{name}.test_accuracy"): row["test_accuracy"]
                for name, row in (metrics.get("baselines") or {}).items() if _number(row.get("test_accuracy"))})
    for key, value in (("comparison.mcnemar_p", (metrics.get("comparison") or {}).get("mcnemar_p")),
                       ("wall_seconds", metrics.get("wall_seconds"))):
        if _number(value):
            out[key] = value
    return out


def stage_artifacts(paths: Paths, stage: str) -> list[tuple[Path, str]]:
    """The files a stage's MLflow run carries (those that exist), each with its artifact folder."""
    synthesized = bool(atomic.read_json(paths.synthesize_report).get("generated"))
    files = {
        "ingest": [paths.ingest_report],
        "synthesize": [paths.synthesize_report] + ([paths.synthetic_preview] if synthesized else []),
        "augment": [paths.augment_report, paths.augment_preview],
        "featurize": [paths.featurize_report],
        "train_head": [paths.train_head_report, paths.selection_report, paths.selection_table],
        "finetune": [paths.finetune_report, paths.finetune_history],
        "evaluate": [paths.predictions],
        "advise": [paths.advice_md, paths.advice_curve_png, paths.label_next_csv, paths.suspect_labels_csv],
    }[stage]
    found = [(f, "reports") for f in files if f.exists()]
    if stage == "synthesize" and synthesized:  # provenance of every generated image
        found.append((paths.synthetic_manifest, "synthetic"))
    return found


def stage_params(params: Params, root: Path, stage: str) -> dict:
    """The params a stage declares in dvc.yaml (the ones it reads), without switched-off settings."""
    dvc_file = root / "dvc.yaml"
    declared = ((yaml.safe_load(dvc_file.read_text()) or {}).get("stages") or {}).get(stage, {}).get("params", []) \
        if dvc_file.exists() else []
    keys = [k for entry in declared for k in ([entry] if isinstance(entry, str) else
                                              [k for ks in entry.values() for k in (ks or [])])]
    return {k: v for k, v in params.active().items() if any(k == p or k.startswith(p + ".") for p in keys)}


def _ms(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None


def log_pipeline_run(params: Params, paths: Paths, run_name: str | None = None, tags: dict | None = None) -> str:
    """Log the finished pipeline to MLflow; returns the parent run's id. ``tags`` go on the parent
    run (the Prefect flow-run id, for one).

    If the tracking server stops answering midway, the error says so in one line. Nothing local is
    lost (every stage output was written before), and the registry is never left half-updated:
    a model version is registered only once fully logged, and the aliases move only after that.
    """
    try:
        return _log_pipeline_run(params, paths, run_name, tags or {})
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below; anything else propagates unchanged
        if not is_unreachable(exc):
            raise
        raise TransientError(
            f"the MLflow tracking server at {paths.mlflow_uri} stopped answering while the run was being "
            f"logged ({type(exc).__name__}). The local outputs (reports/, models/) are complete and the "
            "registry aliases were not moved to an incomplete model; run `python -m flows.evaluate` "
            "(or `dvc repro`) again once the server is back.") from None


def _experiment(params: Params, paths: Paths) -> str:
    import mlflow

    mlflow.set_tracking_uri(paths.mlflow_uri)
    try:
        experiment = mlflow.set_experiment(params.mlflow.experiment)
    except Exception as exc:  # noqa: BLE001 - tracking store unreachable or broken
        unreachable = is_unreachable(exc)
        raise (TransientError if unreachable else PipelineError)(
            f"MLflow tracking at {paths.mlflow_uri} is not usable: "
            f"{'it does not answer' if unreachable else exc}. Check "
            "MLFLOW_TRACKING_URI (unset it to use sqlite:///mlflow.db in the project).") from None
    if experiment.tags.get("mlflow.experimentKind") != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", EXPERIMENT_KIND)
    return experiment.experiment_id


def _previous_end(experiment_id: str) -> int:
    """When the last logged pipeline execution ended (ms): stages that finished after it ran in this one."""
    import mlflow

    last = mlflow.MlflowClient().search_runs([experiment_id], f"tags.run_kind = '{PIPELINE}'",
                                             order_by=["attributes.end_time DESC"], max_results=1)
    return int(last[0].info.end_time or 0) if last else 0


def run_title(params: Params, metrics: dict, commit: str | None) -> str:
    """A run name that says what it is: "20-shot mobilenet_v2 → finetune_tta @ b808f7b"."""
    shots = params.data.shots_per_class
    backbone = (metrics.get("selection") or {}).get("backbone") or params.backbone.names[0]
    return (f"{f'{shots}-shot' if shots else 'all labels'} {backbone} → {metrics.get('candidate', '?')}"
            + (f" @ {commit[:7]}" if commit else ""))


def describe(params: Params, metrics: dict, ingest: dict, ran: list[str], version: str,
             decision: dict | None) -> str:
    """The parent run's markdown description (MLflow's mlflow.note.content)."""
    sel = metrics.get("selection") or {}
    counts = ingest.get("counts") or {}
    from . import modalities

    items = modalities.nouns(ingest.get("modality"))
    lines = [f"**{metrics.get('candidate', '?')}** on {len(ingest.get('classes') or [])} classes: test accuracy "
             f"**{metrics['accuracy']:.1%}**, macro-F1 **{metrics['macro_f1']:.3f}** "
             f"on {metrics.get('n_test', counts.get('test', '?'))} held-out {items}"]
    if "ci" in metrics:
        lo, hi = metrics["ci"]["accuracy"]
        lines[0] += f" ({metrics['ci']['level']:.0%} interval {lo:.1%}–{hi:.1%})"
    lines[0] += "."
    source = params.data.path if params.data.source != "sample" else "the built-in Fashion-MNIST sample"
    lines.append(f"- **Data:** {source} (data version `{version[:12]}`): {counts.get('train', 0)} train, "
                 f"{counts.get('val', 0)} val, {counts.get('test', 0)} test {items}"
                 + (f", {ingest['n_rejected']} rejected (see ingest)" if ingest.get("n_rejected") else "") + ".")
    if sel.get("mode") == "cv":
        lines.append(f"- **Choice:** {sel['folds']}-fold cross-validation × {sel['repeats']} on all "
                     f"{sel['n_labelled']} labelled {items}, then refitted on them: {sel['winner']} ({sel['reason']}).")
    elif sel:
        lines.append(f"- **Choice:** on the val split: {sel.get('winner')} ({sel.get('reason')}).")
    if (sel.get("finetune") or {}).get("reason"):
        lines.append(f"- **Fine-tuning:** {sel['finetune']['reason']}.")
    if decision:
        lines.append(f"- **Registry:** version {decision['challenger_version']} is `challenger`; "
                     + ("promoted to `champion`" if decision["promoted"] else "not promoted")
                     + f" ({decision['reason']}).")
    lines.append(f"- **Stages run in this execution:** {', '.join(ran) if ran else 'none (all up to date)'}; "
                 "each stage has a nested run with its params, figures and reports.")
    return "\n".join(lines)


def rounds_metrics(labelled: dict) -> dict[str, float]:
    """A labelling round's figures as the parent run's metrics (labelling.*)."""
    flat = {"labels_added": labelled["labels_added"], "fixes": labelled["fixes"], "cv_before": labelled["cv_before"],
            "cv_after": labelled["cv_after"], "test_macro_f1_before": labelled["test_macro_f1_before"],
            "forecast_cv": (labelled.get("forecast") or {}).get("predicted"),
            "accuracy_change_vs_champion": (labelled.get("vs_champion") or {}).get("accuracy_change")}
    return {f"labelling.{k}": float(v) for k, v in flat.items() if _number(v)}


def _log_stage(client, experiment_id: str, parent_id: str, params: Params, paths: Paths, stage: str,
               ran: bool) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    report = atomic.read_json(paths.stage_report(stage))
    run = client.create_run(experiment_id, start_time=_ms(report.get("started_at")), run_name=stage,
                            tags={MLFLOW_PARENT_RUN_ID: parent_id, "run_kind": STAGE, "stage": stage,
                                  "stage.status": "ran" if ran else "up to date (outputs of an earlier run)"})
    run_id, now = run.info.run_id, int(time.time() * 1000)
    figures = evaluate_metrics(report) if stage == "evaluate" else report_metrics(report)
    metrics = [Metric(k, v, now, 0) for k, v in figures.items()]
    if stage == "finetune" and paths.finetune_history.exists():  # the per-epoch curves, apart from the summary
        import pandas as pd

        metrics += [Metric(f"per_epoch/{k}", float(v), now, int(row["epoch"]))
                    for row in pd.read_csv(paths.finetune_history).to_dict("records")
                    for k, v in row.items() if k != "epoch" and v == v]
    items = [Param(k, str(v)[:6000]) for k, v in stage_params(params, paths.root, stage).items()]
    client.log_batch(run_id, metrics=metrics, params=items)  # chunked by the client
    for artifact, folder in stage_artifacts(paths, stage):
        client.log_artifact(run_id, str(artifact), folder)
    client.set_terminated(run_id, "FINISHED", end_time=_ms(report.get("finished_at")) or now)


def _log_datasets(paths: Paths, params: Params, version: str) -> None:
    import mlflow

    from .dataset import read_manifest

    manifest = read_manifest(paths.manifest)
    name = Path(params.data.path).stem or "data"
    for split, context in SPLITS_CONTEXT.items():
        rows = manifest.loc[manifest["split"] == split, ["path", "label"]].reset_index(drop=True)
        if len(rows):
            with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both local
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(rows, source=str(paths.prepared_dir), targets="label",
                                                  name=f"{name}/{split}", digest=version[:32])
            mlflow.log_input(dataset, context=context)


def _log_pipeline_run(params: Params, paths: Paths, run_name: str | None, tags: dict) -> str:
    import mlflow

    experiment_id = _experiment(params, paths)
    client = mlflow.MlflowClient()
    metrics, ingest = atomic.read_json(paths.metrics), atomic.read_json(paths.ingest_report)
    reports = {stage: atomic.read_json(paths.stage_report(stage)) for stage in LOGGED_BY_EVALUATE}
    previous_end = _previous_end(experiment_id)
    ran = [s for s in LOGGED_BY_EVALUATE if (_ms(reports[s].get("finished_at")) or 0) > previous_end]
    starts = [_ms(reports[s].get("started_at")) for s in ran if reports[s].get("started_at")]
    commit, version = git_commit(paths.root), data_version(paths)
    sel = metrics.get("selection") or {}
    parent = client.create_run(experiment_id, start_time=min(starts) if starts else None,
                               run_name=run_name or run_title(params, metrics, commit))
    parent_id = parent.info.run_id
    run_tags = {"run_kind": PIPELINE, "git_commit": commit or "unknown", "data_version": version,
                "candidate": metrics.get("candidate", "?"), "backbone": sel.get("backbone") or params.backbone.names[0],
                "shots": str(params.data.shots_per_class or "all"), "seed": str(params.seed), **tags}
    if sel:
        run_tags.update({"selection.mode": sel["mode"], "selection.head": sel["winner"],
                         "selection.finetune": (sel.get("finetune") or {}).get("reason", "disabled")})
    synthesis = reports["synthesize"]
    if synthesis.get("generated"):
        run_tags.update({"synthetic.generator": synthesis["generator"], "synthetic.model_hash": synthesis["model_hash"]})
    with mlflow.start_run(run_id=parent_id):
        mlflow.set_tags(run_tags)
        mlflow.log_params(params.active())
        mlflow.log_metrics(headline_metrics(metrics))
        _log_datasets(paths, params, version)
        for artifact in (paths.metrics, paths.confusion_png, paths.reliability_png, paths.per_class_csv,
                         paths.selection_report):
            if artifact.exists():
                mlflow.log_artifact(str(artifact), artifact_path="reports")
        for config in (paths.dvc_lock, paths.root / "params.yaml"):
            if config.exists():
                mlflow.log_artifact(str(config), artifact_path="config")
        for stage in LOGGED_BY_EVALUATE:
            if reports[stage]:
                _log_stage(client, experiment_id, parent_id, params, paths, stage, stage in ran)
        decision = None
        if params.mlflow.log_model:
            decision = _register(params, paths, metrics, version, commit, parent_id)
        labelled = rounds.result(paths.resolve(params.label.folder), metrics, ingest, decision)
        if labelled:
            mlflow.log_metrics(rounds_metrics(labelled))
            mlflow.set_tag("labelling.round", labelled["sentence"])
        mlflow.set_tag("mlflow.note.content", describe(params, metrics, ingest, ran, version, decision)
                       + (f"\n- **Labelling loop:** {labelled['sentence']}" if labelled else ""))
    atomic.write_json(paths.mlflow_run, {"run_id": parent_id, "experiment_id": experiment_id,
                                         "tracking_uri": paths.mlflow_uri, **ui_urls(paths.mlflow_uri, experiment_id, parent_id),
                                         "model_version": (decision or {}).get("challenger_version"),
                                         "promotion": decision, "labelling_round": labelled})
    return parent_id


def ui_urls(tracking_uri: str, experiment_id: str, run_id: str) -> dict[str, str]:
    """The MLflow UI pages of an experiment's runs and of one run (training view): the tracking
    server's own address, or `mlflow ui`'s default one for a local store."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    runs, view = f"{base}/#/experiments/{experiment_id}/runs", "?workflowType=machine_learning"  # not GenAI's
    return {"experiment_url": runs + view, "run_url": f"{runs}/{run_id}{view}"}


def _register(params: Params, paths: Paths, metrics: dict, version: str, commit: str | None, run_id: str) -> dict:
    import mlflow

    from . import modalities
    from .registry import describe_version, register_and_promote

    modality = modalities.of_dataset(paths)
    info, classes = modality.log_model(params, paths, metrics)
    decision = register_and_promote(info.model_uri, params, paths, float(metrics["accuracy"]), version)
    describe_version(params, decision, classes, metrics,
                     {"data_version": version, "git_commit": commit or "unknown", "run_id": run_id}, modality)
    mlflow.set_tags({"promotion.promoted": str(decision.promoted).lower(), "promotion.reason": decision.reason,
                     "promotion.challenger_version": decision.challenger_version})
    if decision.champion_accuracy is not None:
        mlflow.log_metric("promotion.champion_test_accuracy", decision.champion_accuracy)
    mlflow.log_dict(decision.as_dict(), "promotion.json")
    return decision.as_dict()


def log_advice(params: Params, paths: Paths) -> str | None:
    """The advise stage (it runs after evaluate, which logged the execution): a child run "advise"
    of the execution's run (reports/mlflow_run.json) with its figures, params and files (the
    report, the learning curve, the CSVs), and its first sentence as the parent's tag ``advice``.
    Returns the parent run's id, or None when no execution was logged."""
    import mlflow

    logged, report = atomic.read_json(paths.mlflow_run), atomic.read_json(paths.stage_report("advise"))
    if not logged.get("run_id") or not report.get("enabled"):
        return None
    mlflow.set_tracking_uri(paths.mlflow_uri)
    client = mlflow.MlflowClient()
    _log_stage(client, logged["experiment_id"], logged["run_id"], params, paths, "advise", True)
    client.set_tag(logged["run_id"], "advice", report["summary"][0][:5000])
    return logged["run_id"]
