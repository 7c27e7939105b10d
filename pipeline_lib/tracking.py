"""MLflow: one run per pipeline execution, with params, data version, git commit, every stage's
metrics, the plots and the deployable classifier (backbone + head)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import yaml

from .config import Params, Paths
from .errors import PipelineError, TransientError


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def data_version(lock_file: Path) -> dict[str, str]:
    """The content hashes DVC recorded for each stage's outputs: {"dvc.ingest.data/prepared": md5}."""
    if not lock_file.exists():
        return {}
    lock = yaml.safe_load(lock_file.read_text()) or {}
    tags = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for out in entry.get("outs") or []:
            if "md5" in out:
                tags[f"dvc.{stage}.{out['path']}"] = out["md5"]
    return tags


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def stage_metrics(paths: Paths) -> dict[str, float]:
    """The numeric results of every stage, prefixed by the stage name."""
    out: dict[str, float] = {}
    ingest = _read_json(paths.ingest_report)
    for split, n in (ingest.get("counts") or {}).items():
        out[f"ingest.{split}_images"] = n
    for key in ("n_rejected", "n_duplicates", "n_leakage"):
        if key in ingest:
            out[f"ingest.{key}"] = ingest[key]
    for stage, path in (("synthesize", paths.synthesize_report),
                        ("featurize", paths.featurize_report), ("train_head", paths.train_head_report),
                        ("augment", paths.augment_report), ("finetune", paths.finetune_report)):
        for key, value in _read_json(path).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{stage}.{key}"] = value
    metrics = _read_json(paths.metrics)
    for key in ("accuracy", "macro_f1"):
        if key in metrics:
            out[f"test_{key}"] = metrics[key]
    for name, scores in (metrics.get("models") or {}).items():
        for key, value in scores.items():
            out[f"{name}.{key}"] = value
    for name, row in (metrics.get("baselines") or {}).items():
        out[f"baseline.{name}.test_accuracy"] = row["test_accuracy"]
    if "comparison" in metrics:
        out["comparison.mcnemar_p"] = metrics["comparison"]["mcnemar_p"]
    for key, (lo, hi) in ((k, v) for k, v in (metrics.get("ci") or {}).items() if isinstance(v, list)):
        out[f"test_{key}_ci_low"], out[f"test_{key}_ci_high"] = lo, hi
    for key, value in (metrics.get("calibration") or {}).items():
        if isinstance(value, (int, float)):
            out[f"test_calibration.{key}"] = value
    selection = metrics.get("selection") or {}
    for name, row in (selection.get("table") or {}).items():
        key = re.sub(r"[^\w.\-/]+", "_", name.replace(" + flip TTA", "_tta").replace("linear C=", "linear_C"))
        out[f"selection.{key}.cv_{selection['metric']}"] = row[selection["metric"]]
        out[f"selection.{key}.cv_{selection['metric']}_std"] = row[selection["metric"] + "_std"]
    for cls, row in (metrics.get("per_class") or {}).items():
        out[f"test_recall.{cls}"] = row["recall"]
        out[f"test_precision.{cls}"] = row["precision"]
    return out


def _log_histories(run_id: str, histories: dict[str, Path]) -> None:
    """Per-epoch curves as step metrics ("<stage>.val_loss" at step = epoch), in one call."""
    import time

    import mlflow
    import pandas as pd
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    steps = [Metric(f"{stage}.{k}", float(v), now, int(row["epoch"]))
             for stage, path in histories.items() if path.exists()
             for row in pd.read_csv(path).to_dict("records") for k, v in row.items() if k != "epoch" and v == v]
    if steps:
        mlflow.MlflowClient().log_batch(run_id, metrics=steps)


def _unreachable(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) says the tracking server did not answer."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = f"{type(exc).__name__}: {exc}"
        if any(word in text for word in ("ConnectionError", "Connection refused", "Max retries exceeded",
                                         "RemoteDisconnected", "ConnectTimeout", "ReadTimeout",
                                         "Connection aborted", "Connection reset")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def log_pipeline_run(params: Params, paths: Paths, run_name: str | None = None) -> str:
    """Log the finished pipeline to MLflow; returns the run id.

    If the tracking server stops answering midway, the error says so in one line. Nothing local is
    lost (every stage output was written before), and the registry is never left half-updated:
    a model version is registered only once fully logged, and the aliases move only after that.
    """
    try:
        return _log_pipeline_run(params, paths, run_name)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below; anything else propagates unchanged
        if not _unreachable(exc):
            raise
        raise TransientError(
            f"the MLflow tracking server at {paths.mlflow_uri} stopped answering while the run was being "
            f"logged ({type(exc).__name__}). The local outputs (reports/, models/) are complete and the "
            "registry aliases were not moved to an incomplete model; run `python -m flows.evaluate` "
            "(or `dvc repro`) again once the server is back.") from None


def _log_pipeline_run(params: Params, paths: Paths, run_name: str | None) -> str:
    import mlflow
    import torch
    import torchvision

    from .model import build_classifier

    mlflow.set_tracking_uri(paths.mlflow_uri)
    try:
        mlflow.set_experiment(params.mlflow.experiment)
    except Exception as exc:  # noqa: BLE001 - tracking store unreachable or broken
        unreachable = _unreachable(exc)
        raise (TransientError if unreachable else PipelineError)(
            f"MLflow tracking at {paths.mlflow_uri} is not usable: "
            f"{'it does not answer' if unreachable else exc}. Check "
                            "MLFLOW_TRACKING_URI (unset it to use sqlite:///mlflow.db in the project).") from None
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.log_params(params.flat())
        tags = {"git_commit": git_commit(paths.root) or "unknown", **data_version(paths.dvc_lock)}
        selection = _read_json(paths.metrics).get("selection") or {}
        if selection:
            tags.update({"selection.mode": selection["mode"], "selection.head": selection["winner"],
                         "selection.reason": selection["reason"],
                         "selection.finetune": (selection.get("finetune") or {}).get("reason", "disabled")})
        mlflow.set_tags(tags)
        mlflow.log_metrics(stage_metrics(paths))
        _log_histories(run.info.run_id, {"finetune": paths.finetune_history})
        for artifact in (paths.metrics, paths.confusion_png, paths.reliability_png, paths.per_class_csv,
                         paths.augment_preview, paths.finetune_report, paths.ingest_report, paths.featurize_report,
                         paths.train_head_report, paths.predictions, paths.synthesize_report, paths.synthetic_preview,
                         paths.selection_report):
            if artifact.exists():
                mlflow.log_artifact(str(artifact), artifact_path="reports")
        synthesis = _read_json(paths.synthesize_report)
        if synthesis.get("generated"):  # provenance of every generated image: generator, prompt, seed, model hash
            mlflow.log_artifact(str(paths.synthetic_manifest), artifact_path="synthetic")
            mlflow.set_tags({"synthetic.generator": synthesis["generator"],
                             "synthetic.model_hash": synthesis["model_hash"]})
        if params.mlflow.log_model:
            metrics = _read_json(paths.metrics)
            model = build_classifier(params, paths, metrics.get("candidate", "head"))
            res = params.backbone.resolution
            example = np.random.default_rng(0).random((2, 3, res, res), dtype=np.float32)
            with torch.no_grad():
                output = model(torch.from_numpy(example)).numpy()
            info = mlflow.pytorch.log_model(
                model, name="model",
                signature=mlflow.models.infer_signature(example, output),
                serialization_format="pt2",  # torch.export graph: loading runs no pickled code
                input_example=example,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"torchvision=={torchvision.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"],
                metadata={"classes": model.classes, "input": f"float32 RGB (N,3,{res},{res}) in [0,1]", "resolution": res,
                          "output": "class probabilities (N, n_classes)"},
            )
            mlflow.log_dict({"classes": model.classes}, "classes.json")
            from .registry import register_and_promote

            decision = register_and_promote(info.model_uri, params, paths,
                                            float(metrics["accuracy"]))
            mlflow.set_tags({"promotion.promoted": str(decision.promoted).lower(),
                             "promotion.reason": decision.reason,
                             "promotion.challenger_version": decision.challenger_version})
            if decision.champion_accuracy is not None:
                mlflow.log_metric("promotion.champion_test_accuracy", decision.champion_accuracy)
            mlflow.log_dict(decision.as_dict(), "promotion.json")
        return run.info.run_id
