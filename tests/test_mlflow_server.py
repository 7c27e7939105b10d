"""The pipeline against a real MLflow tracking server (`mlflow server`, 1 worker, sqlite backend,
local artifact store) through MLFLOW_TRACKING_URI: the run, the model and the alias checked through
the REST API; then the server is stopped in the middle of a run."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest

from tasks.prefect_server import stop_server
from tests.helpers import copy_project, rest, run_cmd, set_params, start_mlflow_server

pytestmark = pytest.mark.e2e
MODEL = "transfer-classifier"


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_api):
    workdir = tmp_path_factory.mktemp("mlflow-server")
    server, url = start_mlflow_server(workdir)
    root = copy_project(tmp_path_factory.mktemp("served") / "project")
    set_params(root, data={"shots_per_class": 3, "sample_test_per_class": 6, "val_fraction": 0.1},
               augment={"copies": 0}, backbone={"resolution": 32},
               finetune={"enabled": False}, evaluate={"bootstrap": 100})
    env = {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": url}
    state = {"server": server, "url": url, "workdir": workdir, "root": root, "env": env}
    yield state
    stop_server(state["server"])


def _query(**params) -> str:
    return urllib.parse.urlencode(params)


def test_pipeline_logs_run_model_and_alias_to_the_server(served):
    root, env, url = served["root"], served["env"], served["url"]
    run_cmd(["python", "-m", "flows.pipeline"], root, env)
    version = rest(url, "registered-models/alias?" + _query(name=MODEL, alias="champion"))["model_version"]
    assert version["version"] == "1" and version["status"] == "READY"
    run = rest(url, "runs/get?" + _query(run_id=version["run_id"]))["run"]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["test_accuracy"] == json.loads((root / "reports/metrics.json").read_text())["accuracy"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["promotion.promoted"] == "true" and "no champion yet" in tags["promotion.reason"]
    artifacts = {f["path"] for f in rest(url, "artifacts/list?" + _query(run_id=version["run_id"],
                                                                        path="reports"))["files"]}
    assert {"reports/metrics.json", "reports/confusion_matrix.png"} <= artifacts
    # the model loads from the server's artifact store (proxied) and classifies the test images
    code = ("import mlflow, torch; m = mlflow.pytorch.load_model('models:/%s@champion'); "
            "print(tuple(m(torch.rand(2, 3, 32, 32)).shape))" % MODEL)
    out = run_cmd([sys.executable, "-c", code], root, env)
    assert out.stdout.strip().endswith("(2, 10)")


def test_server_stopped_mid_run_gives_a_clear_error_and_nothing_half_written(served):
    root, env, url = served["root"], served["env"], served["url"]
    before_metrics = (root / "reports/metrics.json").read_text()
    experiment = rest(url, "experiments/get-by-name?" + _query(experiment_name="transfer-learning"))["experiment"]
    n_runs = len(rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]}).get("runs", []))
    full_env = {**os.environ, **env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    job = subprocess.Popen([sys.executable, "-m", "flows.evaluate"], cwd=root, env=full_env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, running = time.monotonic() + 180, None
    while time.monotonic() < deadline and job.poll() is None and running is None:
        runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]}).get("runs", [])
        if len(runs) > n_runs:
            running = runs[0]["info"]
        else:
            time.sleep(0.05)
    assert running is not None and running["status"] == "RUNNING", "the run was not caught in progress"
    os.killpg(served["server"].pid, signal.SIGKILL)  # the server dies mid-run
    served["server"].wait()
    out, err = job.communicate(timeout=300)
    assert job.returncode == 2, err[-3000:]
    assert f"the MLflow tracking server at {url} stopped answering" in err or f"MLflow tracking at {url}" in err
    assert "Traceback" not in err

    served["server"], url = start_mlflow_server(served["workdir"])  # same database and artifacts
    served["env"]["MLFLOW_TRACKING_URI"] = url
    run = rest(url, "runs/get?" + _query(run_id=running["run_id"]))["run"]
    assert run["info"]["status"] != "FINISHED"
    champion = rest(url, "registered-models/alias?" + _query(name=MODEL, alias="champion"))["model_version"]
    challenger = rest(url, "registered-models/alias?" + _query(name=MODEL, alias="challenger"))["model_version"]
    assert champion["version"] == challenger["version"] == "1"  # the aliases did not move
    versions = rest(url, "model-versions/search?" + _query(filter=f"name='{MODEL}'"))["model_versions"]
    assert all(v["status"] == "READY" for v in versions)  # no half-registered version
    after = json.loads((root / "reports/metrics.json").read_text())  # whole, as evaluate wrote it
    assert after["accuracy"] == json.loads(before_metrics)["accuracy"]
    # once the server is back, the same command logs a complete run
    run_cmd(["python", "-m", "flows.evaluate"], root, served["env"])
    runs = rest(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert runs[0]["info"]["status"] == "FINISHED"
