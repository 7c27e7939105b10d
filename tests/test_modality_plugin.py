"""The modality seam, proven: a third modality (tests/modality_vectors.py: numeric vectors, the
identity encoder, no fine-tuning, augmentation or generators) is registered from a module outside
pipeline_lib and runs through the real `dvc repro` (each stage a Prefect flow run), ingest to
advise, then MLflow's pyfunc model and `python -m flows.predict`. No stage module knows it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.stages import STAGES
from tests.helpers import copy_project, run_cmd, set_params

pytestmark = pytest.mark.e2e

CLASSES = ("low", "mid", "high")


def vectors(per_class: int, seed: int = 0) -> pd.DataFrame:
    """Three well separated Gaussian classes in 6 dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (len(CLASSES), 6))
    rows = [dict(zip([f"f{j}" for j in range(6)], rng.normal(centres[c], 1.0)), label=name)
            for c, name in enumerate(CLASSES) for _ in range(per_class)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, prefect_api):
    root = copy_project(tmp_path_factory.mktemp("e2e-vectors") / "project")
    shutil.copy(Path(__file__).with_name("modality_vectors.py"), root / "vectors_modality.py")
    vectors(20).to_csv(root / "vectors.csv", index=False)
    set_params(root, data={"source": "manifest", "path": "vectors.csv", "shots_per_class": None})
    env = {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": "", "PIPELINE_MODALITIES": "vectors_modality"}
    run_cmd(["git", "add", "-A"], root)
    run_cmd(["git", "commit", "-qm", "vectors data"], root)
    return root, env, run_cmd(["dvc", "repro"], root, env)


def test_a_plugin_modality_runs_every_stage_under_dvc_repro(reproduced):
    root, _, out = reproduced
    assert [s for s in STAGES if f"Running stage '{s}'" in out.stdout] == list(STAGES)
    assert json.loads((root / "data/prepared/dataset.json").read_text()) == {"modality": "vectors"}
    ingest = json.loads((root / "reports/ingest.json").read_text())
    assert ingest["modality"] == "vectors" and ingest["counts"]["test"] == 12 and not ingest["n_rejected"]
    assert len(list((root / "data/prepared/vectors").glob("*.npy"))) == 60
    finetune = json.loads((root / "reports/finetune.json").read_text())
    assert finetune["kept"] is False and "no encoder to tune" in finetune["reason"]
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["candidate"] == "head" and metrics["accuracy"] >= 0.9  # chance 1/3
    advice = json.loads((root / "reports/advise.json").read_text())
    assert advice["enabled"] and (root / "reports/advice.md").exists()


def test_its_logged_model_and_predict_work_from_the_registry(reproduced, tmp_path):
    import mlflow

    root, env, _ = reproduced
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    logged = json.loads((root / "reports/mlflow_run.json").read_text())
    info = mlflow.models.get_model_info(f"runs:/{logged['run_id']}/model")
    assert info.metadata["modality"] == "vectors" and sorted(info.metadata["classes"]) == sorted(CLASSES)
    new = vectors(4, seed=0).sample(frac=1.0, random_state=1)  # the same classes, other draws
    new.drop(columns="label").to_csv(root / "new.csv", index=False)
    out = run_cmd(["python", "-m", "flows.predict", "new.csv", "--out", str(tmp_path / "preds.csv")], root, env)
    assert "12 predictions" in out.stdout
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert (preds["predicted"].to_numpy() == new["label"].to_numpy()).mean() >= 0.9
