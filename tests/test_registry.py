"""Champion / challenger in a real MLflow registry (sqlite in a temp dir), with real models."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline_lib import tracking
from pipeline_lib.config import parse_params
from pipeline_lib.paths import Paths
from pipeline_lib.registry import decide
from pipeline_lib.stages import evaluate, featurize, ingest, train_head
from tests.helpers import write_folder_dataset


def _correct(n, wrong):
    out = np.ones(n, bool)
    out[list(wrong)] = False
    return out


def test_decide_promotes_only_a_challenger_significantly_better_on_the_same_items():
    assert decide(_correct(10, []), None, 0.05)[:2] == (True, "no champion yet")
    champion = _correct(100, range(20))                                   # 80 % right
    promoted, reason, test = decide(_correct(100, range(12, 20)), champion, 0.05)  # right on 12 more, worse on none
    assert promoted and test["only_second_correct"] == 12 and test["only_first_correct"] == 0
    assert test["p_value"] == pytest.approx(0.5 ** 12) and "p = " in reason
    # 2 more right and 1 more wrong: ahead by one item, which is noise
    promoted, reason, test = decide(_correct(100, [*range(2, 20), 50]), champion, 0.05)
    assert not promoted and test["p_value"] > 0.3
    # the same errors (a re-run): a tie is never promoted
    promoted, reason, _ = decide(champion.copy(), champion, 0.05)
    assert not promoted and "a tie is never promoted" in reason
    assert not decide(_correct(100, range(30)), champion, 0.05)[0]       # worse
    # another task: no comparison, the new model replaces the champion and says why
    promoted, reason, test = decide(champion, None, 0.05, "the champion predicts other classes (a, b) than this model (a, c)")
    assert promoted and "cannot be compared" in reason and test == {}


def test_false_promotions_under_the_null_are_rare():
    """Two models with the same error rate on the same items (re-runs with other seeds): the old rule
    (test accuracy >= the champion's) promoted about half of them; McNemar at 0.05 about 5 % or less."""
    rng = np.random.default_rng(0)
    old = new = 0
    for _ in range(400):
        ease = rng.random(300)
        a, b = ease > 0.2 + rng.normal(0, 0.05, 300), ease > 0.2 + rng.normal(0, 0.05, 300)
        old += b.mean() >= a.mean()
        new += decide(b, a, 0.05)[0]
    assert old / 400 > 0.45 and new / 400 < 0.06


@pytest.mark.pipeline  # runs stages in its body
def test_better_model_is_promoted_worse_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    write_folder_dataset(tmp_path / "raw", per_class=30)  # 18 test images: enough for a paired test to decide
    base = {"data": {"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": None},
            "backbone": {"resolution": 32}, "mlflow": {"model_name": "toy", "promotion_level": 0.05}}
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
    assert second["promoted"] and second["champion_version"] == "1" and second["test"]["p_value"] < 0.05
    assert second["test"]["n"] == len(pd.read_parquet(paths.manifest).query("split == 'test'"))
    assert second["champion_accuracy"] == pytest.approx(weak_acc, abs=1 / 18)  # scored on the same test set
    assert run.data.tags["promotion.promoted"] == "true"

    _, third, run = train_and_log(weak=True)
    assert not third["promoted"] and "challenger not shown better" in third["reason"]
    assert third["test"]["only_first_correct"] > third["test"]["only_second_correct"]
    assert third["champion_accuracy"] == pytest.approx(good_acc, abs=1 / 18)
    assert run.data.tags["promotion.promoted"] == "false"
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("toy", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("toy", "challenger").version) == "3"

    _, fourth, _ = train_and_log(weak=False)  # the champion's recipe again: the same errors
    assert not fourth["promoted"] and "a tie is never promoted" in fourth["reason"]

    write_folder_dataset(tmp_path / "other", per_class=12, classes=("bag", "sneaker"), seed=3)
    base["data"]["path"] = str(tmp_path / "other")  # another task: never scored against the champion
    ingest.run(parse_params(base), paths)
    featurize.run(parse_params(base), paths)
    _, fifth, _ = train_and_log(weak=False)
    assert fifth["promoted"] and "predicts other classes" in fifth["reason"] and fifth["champion_accuracy"] is None
