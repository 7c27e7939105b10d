"""End to end for text: a CSV of real reviews in a temporary git repo, `dvc repro` for real (each
stage a Prefect flow run), the default params but the data source."""

import json

import pandas as pd
import pytest

from pipeline_lib.stages import STAGES
from tests.helpers import clone_project, copy_project, run_cmd, set_params
from tests.test_text import reviews

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, prefect_api):
    root = copy_project(tmp_path_factory.mktemp("e2e-text") / "project")
    reviews(6, 5).to_csv(root / "reviews.csv", index=False)
    set_params(root, data={"source": "manifest", "path": "reviews.csv", "shots_per_class": None},
               finetune={"text": {"epochs": 3}}, text={"max_length": 64})  # a few short steps per fold
    env = {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": ""}
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "text data"], root)
    return root, env, run_cmd(["dvc", "repro"], root, env)


def _ran(output):
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def test_text_repro_runs_every_stage_and_logs_a_text_model(reproduced):
    root, _, out = reproduced
    assert _ran(out.stdout) == list(STAGES)
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["n_test"] == 20 and metrics["accuracy"] >= 0.6  # chance 0.25
    decision = metrics["selection"]["finetune"]
    assert "contrastive tuning of the text encoder" in decision["reason"] and decision["folds"] == 2
    assert metrics["candidate"] == ("finetune" if decision["kept"] else "head")
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    logged = json.loads((root / "reports/mlflow_run.json").read_text())
    info = mlflow.models.get_model_info(f"runs:/{logged['run_id']}/model")
    assert info.metadata["modality"] == "text" and info.flavors.keys() >= {"python_function"}


def test_second_repro_runs_nothing_and_a_head_change_reuses_the_features(reproduced, tmp_path):
    src, env, _ = reproduced
    root = clone_project(src, tmp_path / "project")
    again = run_cmd(["dvc", "repro"], root, env)
    assert _ran(again.stdout) == [] and "up to date" in again.stdout
    before = (root / "reports/featurize.json").read_text()
    set_params(root, train_head={"C": [0.1, 1.0, 10.0]})
    out = run_cmd(["dvc", "repro"], root, env)
    # synthesize's confidence probe reads train_head.C too: it re-runs, writes the same (empty) outputs
    assert _ran(out.stdout)[-4:] == ["train_head", "finetune", "evaluate", "advise"] and "featurize" not in _ran(out.stdout)
    assert (root / "reports/featurize.json").read_text() == before
    assert pd.read_csv(root / "reports/predictions.csv").shape[0] == 20
