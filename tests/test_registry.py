"""Champion / challenger in a real MLflow registry (sqlite in a temp dir), with real models."""

import json

import mlflow
import pytest

from pipeline_lib import tracking
from pipeline_lib.config import Paths, parse_params
from pipeline_lib.registry import decide
from pipeline_lib.stages import evaluate, featurize, ingest, train_head
from tests.helpers import write_folder_dataset


def test_decide_rule():
    assert decide(0.8, None, 0.01) == (True, "no champion yet")
    assert decide(0.82, 0.80, 0.01)[0] and not decide(0.805, 0.80, 0.01)[0]
    assert "< margin" in decide(0.70, 0.80, 0.0)[1]


def test_better_model_is_promoted_worse_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    write_folder_dataset(tmp_path / "raw", per_class=12)
    base = {"data": {"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": None},
            "backbone": {"resolution": 32}, "mlflow": {"model_name": "toy", "promotion_margin": 0.01}}
    paths = Paths.for_root(tmp_path)
    ingest.run(parse_params(base), paths)
    featurize.run(parse_params(base), paths)

    def train_and_log(weak: bool):
        # weak: an MLP head trained for one step at a negligible rate (its random start)
        head = {"kinds": ["mlp"], "max_epochs": 1, "lr": 1e-7} if weak else {"C": [1.0]}
        params = parse_params({**base, "train_head": head})
        train_head.run(params, paths)
        acc = evaluate.run(params, paths)["accuracy"]
        run_id = tracking.log_pipeline_run(params, paths)
        promotion = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/promotion.json"))
        return acc, promotion, mlflow.MlflowClient().get_run(run_id)

    weak_acc, first, _ = train_and_log(weak=True)
    assert first["promoted"] and first["reason"] == "no champion yet"

    good_acc, second, run = train_and_log(weak=False)
    assert good_acc > weak_acc + 0.3
    assert second["promoted"] and second["champion_version"] == "1"
    assert second["champion_accuracy"] == pytest.approx(weak_acc, abs=1 / 12)  # scored on the same test set
    assert run.data.tags["promotion.promoted"] == "true"

    _, third, run = train_and_log(weak=True)
    assert not third["promoted"] and "< margin" in third["reason"]
    assert third["champion_accuracy"] == pytest.approx(good_acc, abs=1 / 12)
    assert run.data.tags["promotion.promoted"] == "false"
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("toy", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("toy", "challenger").version) == "3"
