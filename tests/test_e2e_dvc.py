"""End to end: the project copied into a temporary git repo, `dvc repro` for real (each stage a
Prefect flow run against a real local Prefect server), MLflow on sqlite in the temp dir.

The first `dvc repro` runs once (``reproduced``); every other test starts from its own full copy
of that project (``project``), so the tests do not depend on each other or on their order."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline_lib.feature_cache import FeatureCache
from pipeline_lib.stages import STAGES
from tests.helpers import clone_project, copy_project, run_cmd, set_params

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, prefect_api):
    """The tiny project after its first `dvc repro`: (root, env, that repro's output)."""
    root = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    set_params(root, data={"shots_per_class": 5, "sample_test_per_class": 10, "val_fraction": 0.1},
                augment={"copies": 0}, backbone={"resolution": 32},
                synthetic={"generator": "ddpm", "per_class": 2,
                           "ddpm": {"resolution": 16, "channels": [8, 16], "train_steps": 4, "batch_size": 8,
                                    "sample_steps": 2}},
                finetune={"epochs": 2, "batch_size": 16, "unfreeze_blocks": 1, "lr": 0.0})  # a null control
    env = {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": ""}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    run_cmd(["git", "commit", "-qam", "tiny params"], root)
    return root, env, run_cmd(["dvc", "repro"], root, env)


@pytest.fixture
def project(reproduced, tmp_path):
    """This test's own copy of the reproduced project: (root, env)."""
    src, env, _ = reproduced
    return clone_project(src, tmp_path / "project"), env


def _pipeline_runs(root):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("transfer-learning")
    return client, exp, client.search_runs([exp.experiment_id], "tags.run_kind = 'pipeline'",
                                           order_by=["attributes.start_time DESC"])


def _repro(project, *extra):
    root, env = project
    return run_cmd(["dvc", "repro", *extra], root, env)


def _ran(output):
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def _cache_files(root):
    """The keys of every cached vector (all encoders)."""
    return sorted(key for d in (root / ".cache/features").iterdir() for key in FeatureCache(d.parent, d.name).keys())


def test_first_repro_runs_every_stage_as_a_prefect_flow(reproduced, prefect_api):
    root, _, out = reproduced
    assert _ran(out.stdout) == list(STAGES)
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["n_test"] == 100 and metrics["accuracy"] > 0.45  # chance is 0.10
    finetune = json.loads((root / "reports/finetune.json").read_text())
    assert finetune["gain"] == 0.0 and not finetune["kept"]  # lr 0 reproduces the probe: never kept
    assert set(metrics["models"]) == {"head", "head_tta"} and metrics["candidate"] in metrics["models"]
    assert metrics["selection"]["mode"] == "cv" and metrics["selection"]["n_labelled"] == 50  # 5 per class
    assert (root / "reports/confusion_matrix.png").stat().st_size > 10_000
    import httpx

    # the MLflow run names the execution; its 8 stage flow runs (8 processes) carry its id
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    logged = json.loads((root / "reports/mlflow_run.json").read_text())
    tags = mlflow.MlflowClient().get_run(logged["run_id"]).data.tags
    execution = tags["prefect.execution_id"]
    runs = httpx.post(f"{prefect_api}/flow_runs/filter",
                      json={"flow_runs": {"tags": {"all_": [f"execution:{execution}"]}}}).json()
    flows = {f["id"]: f["name"] for f in httpx.post(f"{prefect_api}/flows/filter", json={}).json()}
    done = {flows[r["flow_id"]]: r for r in runs if r["state_type"] == "COMPLETED"}
    assert set(done) == set(STAGES) and all(done[s]["name"] == f"{s} · {execution}" for s in STAGES)
    assert tags["prefect.flow_run_id"] == done["evaluate"]["id"]
    assert tags["advice"].startswith("Doubling your labels (50 -> 100)")  # advise joined the run evaluate logged
    assert (root / "reports/label_next.csv").exists() and "## 2. What to label next" in (root / "reports/advice.md").read_text()
    artifacts = httpx.post(f"{prefect_api}/artifacts/filter", json={"artifacts": {"flow_run_id": {
        "any_": [r["id"] for r in runs]}}}).json()
    by_key = {a["key"]: a for a in artifacts}
    assert {s.replace("_", "-") for s in STAGES} | {"mlflow-run"} == set(by_key)
    assert "test accuracy" in by_key["evaluate"]["data"] and logged["run_url"] in by_key["mlflow-run"]["data"]
    logs = httpx.post(f"{prefect_api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [done["finetune"]["id"]]}},
                                                        "limit": 200}).json()
    assert any("epoch 1/2" in line["message"] for line in logs)  # per-epoch progress in the run's log


def test_second_repro_runs_nothing_and_logs_nothing(project):
    root, _ = project
    before = (root / "reports/metrics.json").stat().st_mtime_ns
    out = _repro(project)
    assert _ran(out.stdout) == [] and "up to date" in out.stdout
    assert (root / "reports/metrics.json").stat().st_mtime_ns == before
    assert len(_pipeline_runs(root)[2]) == 1  # the first repro's run only


def test_head_param_change_reruns_only_what_depends_on_the_head(project):
    root, _ = project
    featurize_report = (root / "reports/featurize.json").read_text()
    cached = _cache_files(root)
    set_params(root, train_head={"lr": 0.002})
    out = _repro(project)
    assert _ran(out.stdout) == ["train_head", "finetune", "evaluate", "advise"]
    assert (root / "reports/featurize.json").read_text() == featurize_report
    assert _cache_files(root) == cached  # no new feature computed


def test_more_shots_reuse_the_cache(project):
    root, _ = project
    cached = set(_cache_files(root))
    set_params(root, data={"shots_per_class": 6})
    out = _repro(project)
    assert _ran(out.stdout) == list(STAGES)
    report = json.loads((root / "reports/featurize.json").read_text())
    # the 10 new real training images come from the unlabelled pool advise had embedded: only their
    # mirror images (flip TTA) are new; the DDPM retrained on the new data draws new synthetic images
    synthetic = set(pd.read_parquet(root / "data/synthetic/manifest.parquet")["item_id"])
    new = 10 + len(synthetic - cached)
    assert report["computed"] == new and report["cache_hits"] == report["items"] - new
    assert len(set(_cache_files(root)) - cached) == new


def test_mlflow_has_one_run_per_execution_with_a_working_model(reproduced):
    import mlflow
    import torch

    from pipeline_lib.image.backbones import Preprocess, read_image_tensor

    root, _, _ = reproduced  # read only
    client, exp, runs = _pipeline_runs(root)
    assert len(runs) == 1
    run = runs[0]
    # train_head.lr is an MLP setting: switched off with the linear head, not shown
    assert run.data.params["data.shots_per_class"] == "5" and "train_head.lr" not in run.data.params
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    stages = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")}
    assert set(stages) == set(STAGES) and all(r.data.tags["stage.status"] == "ran" for r in stages.values())
    assert "computed" in stages["featurize"].data.metrics and "cv_macro_f1" in stages["train_head"].data.metrics
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    prepared = next(o for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/prepared")
    assert run.data.tags["data_version"] == prepared["md5"].removesuffix(".dir")
    assert {"config/dvc.lock", "config/params.yaml"} == {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert len(run.data.tags["git_commit"]) == 40
    assert run.data.tags["synthetic.generator"] == "ddpm" and len(run.data.tags["synthetic.model_hash"]) == 16
    synthesize = stages["synthesize"].info.run_id
    assert {"reports/synthetic_preview.png"} <= {a.path for a in client.list_artifacts(synthesize, "reports")}
    assert {"synthetic/manifest.parquet"} == {a.path for a in client.list_artifacts(synthesize, "synthetic")}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/confusion_matrix.png", "reports/metrics.json"} <= artifacts
    assert run.data.tags["prefect.flow_run_id"]  # the evaluate flow run that logged it

    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    manifest = pd.read_parquet(root / "data/prepared/manifest.parquet").set_index("item_id")
    preds = pd.read_csv(root / "reports/predictions.csv").head(8)
    resize = Preprocess(32).resize
    images = torch.stack([resize(read_image_tensor(root / manifest.loc[i, "path"])) for i in preds["item_id"]])
    with torch.no_grad():
        proba = model(images).numpy()
    classes = json.loads((root / "data/prepared/classes.json").read_text())
    assert [classes[i] for i in proba.argmax(1)] == preds["predicted"].tolist()
    np.testing.assert_allclose(proba.max(1), preds["confidence"], atol=1e-4)


def test_synthetic_param_change_reruns_synthesize_and_downstream_only_and_reuses_the_ddpm(project):
    root, _ = project
    set_params(root, synthetic={"per_class": 3})
    out = _repro(project)
    assert _ran(out.stdout) == ["synthesize", "featurize", "train_head", "finetune", "evaluate", "advise"]
    report = json.loads((root / "reports/synthesize.json").read_text())
    assert report["generated"] == 30 and report["ddpm_reused"]
    manifest = pd.read_parquet(root / "data/prepared/manifest.parquet")
    synthetic = set(pd.read_parquet(root / "data/synthetic/manifest.parquet")["item_id"])
    assert not synthetic & set(manifest["item_id"])  # never in train/val/test of the real manifest
    for split in ("val", "test"):
        assert not synthetic & set(np.load(root / f"data/features/{split}.npz")["item_id"])


def test_pipeline_flow_runs_the_stale_part_and_records_it_for_dvc(project):
    root, env = project
    set_params(root, train_head={"kinds": ["mlp"]})
    out = run_cmd(["python", "-m", "flows.pipeline"], root, env)
    assert "ran ['train_head', 'finetune', 'evaluate', 'advise']" in out.stdout + out.stderr
    after = _repro(project)
    assert _ran(after.stdout) == [] and "up to date" in after.stdout


def test_predict_with_the_registered_model_matches_evaluate_and_skips_bad_files(project):
    root, env = project
    manifest = pd.read_parquet(root / "data/prepared/manifest.parquet").set_index("item_id")
    expected = pd.read_csv(root / "reports/predictions.csv").head(12)
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    listing = pd.DataFrame({"path": [str(root / manifest.loc[i, "path"]) for i in expected["item_id"]]
                            + ["broken.png", "missing.png"]})
    listing.to_csv(root / "to_predict.csv", index=False)
    out = run_cmd(["python", "-m", "flows.predict", "to_predict.csv", "--model",
                   "models:/transfer-classifier@challenger", "--out", "preds.csv"], root, env)
    assert "12 predictions" in out.stdout
    preds = pd.read_csv(root / "preds.csv")
    assert preds["predicted"].tolist() == expected["predicted"].tolist()
    np.testing.assert_allclose(preds["raw_confidence"], expected["confidence"], atol=1e-4)
    assert (preds["top1"] == preds["predicted"]).all() and {"top3", "top3_p"} <= set(preds.columns)
    report = json.loads((root / "preds.report.json").read_text())
    assert [os.path.basename(s["path"]) for s in report["skipped"]] == ["broken.png", "missing.png"]
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert report["temperature"] == pytest.approx(metrics["calibration"]["temperature"])
    bad = run_cmd(["python", "-m", "flows.predict", "to_predict.csv", "--model", "models:/transfer-classifier@nobody"],
                  root, env, check=False)
    assert bad.returncode == 2 and "cannot load models:/transfer-classifier@nobody" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_retrain_skips_when_nothing_changed_and_refuses_a_concurrent_run(project):
    import subprocess
    import sys
    import time

    root, env = project
    out = run_cmd(["python", "-m", "flows.retrain", "run"], root, env)
    assert "retrain skipped" in out.stdout
    history = [json.loads(line) for line in (root / "reports/retrain_history.jsonl").read_text().splitlines()]
    assert history[-1]["status"] == "skipped"

    set_params(root, train_head={"lr": 0.003})
    full_env = {**os.environ, **env, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    first = subprocess.Popen([sys.executable, "-m", "flows.retrain", "run"], cwd=root, env=full_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = root / ".cache/retrain.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if lock.exists() and f'"pid": {first.pid}' in lock.read_text():
            break
        time.sleep(0.1)
    second = run_cmd(["python", "-m", "flows.retrain", "run"], root, env, check=False)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output[-3000:]
    assert second.returncode == 2 and "another retrain run is in progress" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    last = json.loads((root / "reports/retrain_history.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "ran" and "train_head" in last["stale"] and "train_head" in last["ran"]


def test_user_error_is_one_clear_message_not_a_traceback(project):
    root, env = project
    set_params(root, data={"source": "folder", "path": "data/nowhere"})
    out = run_cmd(["python", "-m", "flows.ingest"], root, env, check=False)
    assert out.returncode == 2
    assert "error: data folder" in out.stderr and "does not exist" in out.stderr
    assert (out.stderr + out.stdout).count("does not exist") == 1  # once, not once per Prefect log line
    assert "Traceback" not in out.stderr + out.stdout
    set_params(root, data={"source": "sample", "path": "pipeline_lib/sample_data/fashion_mnist_sample.npz"},
                train_head={"kinds": ["forest"]})
    out = run_cmd(["python", "-m", "flows.train_head"], root, env, check=False)
    assert out.returncode == 2 and "train_head.kinds.0: got 'forest'; allowed values: 'linear' or 'mlp'" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
