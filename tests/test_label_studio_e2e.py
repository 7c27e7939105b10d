"""The labelling loop for real: a Label Studio server (its own venv, sqlite), the project copied into
a temporary git repo, `dvc repro`, `python -m flows.label push`, a labeller answering through the
API with the true labels of the sample's pool, `pull`, `dvc repro` again, and a second push. Then
the bad inputs a user meets, each one line."""

import json
import os

import pandas as pd
import pytest
import requests

from pipeline_lib.dataset import read_manifest
from tests.helpers import copy_project, run_cmd, set_params

pytestmark = [pytest.mark.e2e, pytest.mark.label_studio]


@pytest.fixture(scope="module")
def loop_project(tmp_path_factory, prefect_api, label_studio):
    root = copy_project(tmp_path_factory.mktemp("loop") / "project")
    set_params(root, data={"shots_per_class": 5, "sample_test_per_class": 10}, backbone={"resolution": 32},
               finetune={"enabled": False}, evaluate={"bootstrap": 0}, advise={"label_next": 10, "repeats": 1},
               label={"url": label_studio.url, "document_root": str(tmp_path_factory.getbasetemp())})
    run_cmd(["git", "commit", "-qam", "tiny params"], root)
    env = {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": "", "LABEL_STUDIO_API_KEY": label_studio.token}
    run_cmd(["dvc", "repro"], root, env)
    return root, env, label_studio


def _label(root, env, *args, check=True):
    return run_cmd(["python", "-m", "flows.label", *args], root, env, check=check)


def _api(server, method, path, **kwargs):
    answer = requests.request(method, server.url + path, headers={"Authorization": f"Token {server.token}"},
                              timeout=60, **kwargs)
    answer.raise_for_status()
    return answer.json() if answer.content else None


def _tasks(server, project_id):
    return _api(server, "GET", f"/api/projects/{project_id}/export",
                params={"exportType": "JSON", "download_all_tasks": "true"})


def _project_id(output):
    return int(output.split("/projects/")[1].split("/")[0])


def test_push_label_pull_retrain_and_push_again(loop_project):
    root, env, server = loop_project
    truth = read_manifest(root / "data/prepared/manifest.parquet").set_index("item_id")["label"]
    suggested = pd.read_csv(root / "reports/label_next.csv")
    first = _label(root, env, "push").stdout
    assert "10 new task(s) sent" in first
    pid = _project_id(first)
    assert "2 already" not in _label(root, env, "push").stdout  # idempotent
    tasks = _tasks(server, pid)
    assert len(tasks) == 10 and {t["data"]["item_id"] for t in tasks} == set(suggested["item_id"])
    full = _api(server, "GET", "/api/tasks", params={"project": pid, "fields": "all", "page_size": 100})["tasks"]
    scores = {t["data"]["item_id"]: t["predictions"][0]["score"] for t in full}
    assert scores[suggested["item_id"][0]] == 1.0 == max(scores.values())  # advise's first pick sorts first
    image = requests.get(server.url + tasks[0]["data"]["item"], headers={"Authorization": f"Token {server.token}"})
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"  # the server shows the prepared image
    for task in tasks:  # an oracle labeller: the sample pool's hidden true labels
        _api(server, "POST", f"/api/tasks/{task['id']}/annotations", json={"result": [
            {"from_name": "label", "to_name": "item", "type": "choices",
             "value": {"choices": [truth[task["data"]["item_id"]]]}}]})
    lock_before, head_before = (root / "dvc.lock").read_text(), (root / "models/head.pt").read_bytes()
    pulled = _label(root, env, "pull").stdout
    assert "pull: written: 10 new label(s)" in pulled and (root / "data/labels/label_studio.csv.dvc").exists()
    assert "nothing new" in _label(root, env, "pull").stdout

    repro = run_cmd(["dvc", "repro"], root, env).stdout
    assert "Running stage 'ingest'" in repro
    manifest = read_manifest(root / "data/prepared/manifest.parquet").set_index("item_id")
    rows = manifest.loc[suggested["item_id"]]
    assert set(rows["split"]) == {"train"} and (rows["label"] == truth[suggested["item_id"]]).all()
    assert json.loads((root / "reports/ingest.json").read_text())["labelling"]["labels"] == 10
    assert (root / "dvc.lock").read_text() != lock_before
    assert (root / "models/head.pt").read_bytes() != head_before  # the model changed
    run = json.loads((root / "reports/mlflow_run.json").read_text())
    assert run["model_version"] == "2" and "Labelling round 1: +10 labels" in run["labelling_round"]["sentence"]
    assert "Labelling round 1" in run_cmd(["python", "-m", "pipeline_lib.summary"], root, env).stdout

    second = _label(root, env, "push").stdout
    assert "10 new task(s) sent" in second and "(10 already there" not in second
    labelled = set(suggested["item_id"])
    new_items = {t["data"]["item_id"] for t in _tasks(server, pid)} - labelled
    assert len(new_items) == 10 and not new_items & labelled
    assert set(manifest.loc[list(new_items), "split"]) <= {"unused"}


def test_bad_input_is_one_line_each(loop_project, tmp_path):
    from pipeline_lib.locks import exclusive
    from tasks.prefect_server import _free_port

    root, env, server = loop_project
    wrong = _label(root, {**env, "LABEL_STUDIO_API_KEY": "not-the-token"}, "push", check=False)
    assert wrong.returncode == 2 and "refused the token in LABEL_STUDIO_API_KEY" in wrong.stderr
    assert "not-the-token" not in wrong.stdout + wrong.stderr
    assert "Traceback" not in wrong.stderr

    set_params(root, label={"url": f"http://127.0.0.1:{_free_port()}"})
    down = _label(root, env, "pull", check=False)
    assert down.returncode == 2 and "Label Studio does not answer at" in down.stderr and "Traceback" not in down.stderr
    set_params(root, label={"url": server.url, "project": "other classes"})
    _api(server, "POST", "/api/projects", json={"title": "other classes", "label_config": (
        '<View><Image name="item" value="$item"/><Choices name="label" toName="item">'
        '<Choice value="cat"/></Choices></View>')})
    mismatch = _label(root, env, "push", check=False)
    assert mismatch.returncode == 2 and "offers other classes than the data set" in mismatch.stderr
    set_params(root, label={"project": ""})

    with exclusive(root / ".cache" / "label.lock", "label pull"):
        busy = _label(root, env, "pull", check=False)
    assert busy.returncode == 2 and "another label pull is in progress" in busy.stderr
    before = os.listdir(root / "data/labels")
    assert "nothing new" in _label(root, env, "pull").stdout and os.listdir(root / "data/labels") == before

    personal = _api(server, "POST", "/api/token/")["token"]  # a personal access token (JWT) works as well
    assert "nothing new" in _label(root, {**env, "LABEL_STUDIO_API_KEY": personal}, "pull").stdout
