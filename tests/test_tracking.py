"""What MLflow shows of a pipeline execution, read back through the tracking API (real MLflow on
sqlite in a temp dir, the stages really run on a few real images)."""

import json
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from pipeline_lib import tracking
from pipeline_lib.paths import Paths
from pipeline_lib.stages import STAGES
from tests.conftest import ODD_CLASS


def _children(client, run_id):
    return {r.info.run_name: r for r in client.search_runs(
        [client.get_run(run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")}


def test_one_parent_run_per_execution_with_one_child_per_stage_at_its_real_times(logged):
    root, first, second, client = logged
    experiment = client.get_experiment(client.get_run(first).info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the training view
    parents = client.search_runs([experiment.experiment_id], "tags.run_kind = 'pipeline'")
    assert {r.info.run_id for r in parents} == {first, second}
    children = _children(client, second)
    assert set(children) == set(STAGES) - {"advise"}  # advise runs after evaluate and adds its own (test_e2e_dvc)
    ran = {s for s, r in children.items() if r.data.tags["stage.status"] == "ran"}
    assert ran == {"train_head", "finetune", "evaluate"}
    for stage, run in children.items():
        report = json.loads(Paths.for_root(root).stage_report(stage).read_text())
        assert run.info.start_time == int(datetime.fromisoformat(report["started_at"]).timestamp() * 1000)
        assert run.info.end_time == int(datetime.fromisoformat(report["finished_at"]).timestamp() * 1000)
        assert run.info.status == "FINISHED"
    parent = client.get_run(second)
    # the second execution began when its first stage did, not when logging did
    assert parent.info.start_time == children["train_head"].info.start_time
    assert parent.info.end_time >= children["evaluate"].info.end_time


def test_no_metric_key_has_two_values_at_one_step(logged):
    _, first, second, client = logged
    for parent in (first, second):
        for run in [client.get_run(parent), *_children(client, parent).values()]:
            for key in run.data.metrics:
                steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
                assert len(steps) == len(set(steps)), (run.info.run_name, key, steps)
    finetune = _children(client, second)["finetune"]
    history = client.get_metric_history(finetune.info.run_id, "per_epoch/val_accuracy")
    assert [m.step for m in history] == [1, 2]  # the curve, apart from the kept epoch's summary


def test_parent_run_tells_the_story(logged):
    root, first, second, client = logged
    run = client.get_run(second)
    metrics = json.loads((root / "reports/metrics.json").read_text())
    tags, values = run.data.tags, run.data.metrics
    assert values["test_accuracy"] == pytest.approx(metrics["accuracy"])
    assert values["test_accuracy_ci_low"] <= values["test_accuracy"] <= values["test_accuracy_ci_high"]
    assert values["test_macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert f"test_recall/{tracking.metric_key(ODD_CLASS)}" in values  # sanitised; the real name in the artifacts
    assert "cv/linear_C0.5" in values and "cv/linear_C0.5_std" in values
    assert tags["candidate"] == metrics["candidate"] and tags["backbone"] == "mobilenet_v2"
    assert tags["shots"] == "all" and tags["seed"] == "42"
    assert run.info.run_name.startswith("all labels mobilenet_v2 → " + metrics["candidate"] + " @ ")
    note = tags["mlflow.note.content"]
    assert f"{metrics['accuracy']:.1%}" in note and "cross-validation" in note and "train_head" in note
    lock_free_version = tracking.data_version(Paths.for_root(root))
    assert tags["data_version"] == lock_free_version and not any(t.startswith("dvc.") for t in tags)
    assert client.get_run(first).data.tags["prefect.flow_run_id"] == "abc"
    # params: switched-off parts left out (no synthesis, no Dask, no MLP head)
    assert "data.shots_per_class" in run.data.params and "train_head.C" in run.data.params
    assert not any(k.startswith(("synthetic.ddpm", "featurize.dask", "train_head.hidden_dim")) for k in run.data.params)
    # the splits as datasets, versioned by the prepared data
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"raw/train", "raw/test"}
    assert {d.dataset.digest for d in inputs.values()} == {tags["data_version"]}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert artifacts == {"config/params.yaml"}  # no dvc.lock without DVC
    written = json.loads((root / "reports/mlflow_run.json").read_text())
    assert written["run_id"] == second and written["run_url"].endswith(
        f"/#/experiments/{run.info.experiment_id}/runs/{second}?workflowType=machine_learning")


def test_stage_runs_carry_their_own_params_figures_and_reports(logged):
    root, _, second, client = logged
    children = _children(client, second)
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage, run in children.items():
        declared = dvc[stage].get("params", [])
        assert all(any(k == p or k.startswith(p + ".") for p in declared) for k in run.data.params), stage
    assert children["train_head"].data.params["train_head.C"] == "[0.5]"
    assert "cv_macro_f1" in children["train_head"].data.metrics
    assert children["ingest"].data.metrics["counts.train"] == 12
    assert "computed" in children["featurize"].data.metrics
    reports = {a.path for a in client.list_artifacts(children["train_head"].info.run_id, "reports")}
    assert {"reports/train_head.json", "reports/selection.json"} <= reports
    synth = {a.path for a in client.list_artifacts(children["synthesize"].info.run_id, "reports")}
    assert synth == {"reports/synthesize.json"}  # no preview of empty boxes when nothing was generated


def test_registered_model_says_what_it_is_and_takes_small_real_images_of_any_size(logged):
    root, _, second, client = logged
    model = client.get_registered_model("toy")
    assert ODD_CLASS in model.description and "models:/toy@champion" in model.description
    version = client.get_model_version("toy", "2")
    assert version.tags["run_id"] == second and version.tags["data_version"] == client.get_run(second).data.tags["data_version"]
    assert float(version.tags["test_accuracy"]) == pytest.approx(client.get_run(second).data.metrics["test_accuracy"], abs=1e-4)
    assert "test accuracy" in version.description
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    uri = "models:/toy/2"
    files = Path(mlflow.artifacts.download_artifacts(uri))
    assert (files / "input_example.json").stat().st_size < 100_000  # was 1.46 MB of noise
    example = np.asarray(json.loads((files / "input_example.json").read_text()))
    assert example.shape == (2, 3, 28, 28) and 0 <= example.min() and example.max() <= 1 and example.std() > 0.05
    loaded = mlflow.pytorch.load_model(uri)
    with torch.no_grad():
        for shape in [(1, 3, 28, 28), (3, 3, 32, 32), (2, 3, 64, 48)]:
            proba = loaded(torch.rand(*shape))
            assert proba.shape == (shape[0], 3) and torch.allclose(proba.sum(1), torch.ones(shape[0]))
