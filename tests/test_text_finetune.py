"""Contrastive (SetFit-style) tuning of the real all-MiniLM-L6-v2: the pairs, the embedding
geometry it changes, the keep decision's phases (checkpointed folds) and the kept model through
evaluate and MLflow."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline_lib.config import TextFinetuneParams
from pipeline_lib.text import finetune as text_finetune
from pipeline_lib.text.encoder import encode, load_sentence_model, resolve_encoder
from pipeline_lib.text.files import read_text
from tests.test_text import _project

TOY = {  # short texts: a tuning step takes a fraction of a second
    "refund": ["I want my money back", "please refund my order", "can I get a refund", "return the payment to me",
               "I was charged twice, refund it", "give me my money back now", "refund the last invoice"],
    "shipping": ["where is my parcel", "my package has not arrived", "when will the order ship",
                 "the delivery is late", "track my shipment please", "the courier lost my box", "no parcel yet"],
    "password": ["I forgot my password", "reset my login please", "cannot sign in to my account",
                 "my password does not work", "locked out of my account", "how do I change my password",
                 "the login page rejects me"],
}


def _toy(test_per_class: int = 2) -> pd.DataFrame:
    rows = [{"text": t, "label": c, "split": "test" if i >= len(texts) - test_per_class else "train"}
            for c, texts in TOY.items() for i, t in enumerate(texts)]
    return pd.DataFrame(rows)


def _margin(vectors: np.ndarray, y: np.ndarray) -> float:
    """Mean cosine similarity within classes minus between classes."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim, same = v @ v.T, y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return float(sim[same & off].mean() - sim[~same].mean())


def test_pairs_are_balanced_seeded_and_never_a_text_with_itself():
    y = np.array([0, 0, 0, 1, 1, 2])  # class 2 has one text: negatives only
    a, b, target = text_finetune.contrastive_pairs(y, 3, seed=1)
    assert len(a) == 3 * (5 * 2 + 1) and (a != b).all()
    assert ((y[a] == y[b]) == (target == 1)).all() and target.sum() == 15
    again = text_finetune.contrastive_pairs(y, 3, seed=1)
    assert all(np.array_equal(x, z) for x, z in zip((a, b, target), again))
    assert not np.array_equal(a, text_finetune.contrastive_pairs(y, 3, seed=2)[0])


def test_in_batch_plan_deals_every_class_into_each_batch_and_is_seeded():
    y = np.array([0] * 5 + [1] * 5 + [2] * 3)
    plan = text_finetune.in_batch_plan(y, 6, epochs=2, seed=3)
    assert [len(b) for b in plan] == [6, 7, 6, 7]  # a last batch of one text joins the one before
    for epoch in (plan[:2], plan[2:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(13))  # each text once per epoch
    assert all(set(y[b]) == {0, 1, 2} for b in plan)  # dealt round-robin: every class in every batch
    assert all(np.array_equal(a, b) for a, b in zip(plan, text_finetune.in_batch_plan(y, 6, 2, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(plan, text_finetune.in_batch_plan(y, 6, 2, seed=4)))
    assert text_finetune.pairs_seen(y, TextFinetuneParams(batch_size=6, epochs=2), 3) == 2 * (15 + 21)


def test_in_batch_loss_weights_positives_and_negatives_equally():
    import torch

    y = torch.tensor([0, 0, 1, 1, 2])
    perfect = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0], [0, 3.0, 0], [0, 0, 1.0]])
    assert float(text_finetune.in_batch_loss(perfect, y)) == pytest.approx(0.0, abs=1e-7)
    same = torch.ones(5, 3)  # every pair at cosine 1: the 2 positive pairs are right, the 8 negatives all wrong
    assert float(text_finetune.in_batch_loss(same, y)) == pytest.approx(0.5)


def test_a_tuning_of_one_step_runs_its_schedule_to_the_end():
    folder = resolve_encoder("all-MiniLM-L6-v2")
    texts, y = ["refund my order", "money back", "where is my parcel", "late delivery"], np.array([0, 0, 1, 1])
    model = text_finetune.tune(folder, 16, texts, y, TextFinetuneParams(epochs=1, batch_size=16), seed=0)
    assert not model.training and encode(model, texts).shape == (4, 384)


@pytest.mark.pipeline  # runs stages in its body
@pytest.mark.parametrize("settings", [TextFinetuneParams(epochs=10, batch_size=8),
                                      TextFinetuneParams(pairs="sampled", pairs_per_example=4, epochs=2, lr=1e-4)],
                         ids=["in_batch", "sampled"])
def test_contrastive_tuning_pulls_each_class_together(settings):
    frame = _toy(test_per_class=0)
    texts, y = frame["text"].tolist(), pd.factorize(frame["label"])[0]
    folder = resolve_encoder("all-MiniLM-L6-v2")
    frozen = encode(load_sentence_model(folder, 64), texts)
    tuned = text_finetune.tune(folder, 64, texts, y, settings, seed=0)
    after = encode(tuned, texts)
    assert _margin(after, y) > _margin(frozen, y) + 0.1
    assert np.allclose(np.linalg.norm(after, axis=1), 1, atol=1e-4)  # the model's own normalisation kept
    again = encode(text_finetune.tune(folder, 64, texts, y, settings, seed=0), texts)
    np.testing.assert_allclose(again, after, atol=1e-5)  # seeded


@pytest.fixture()
def toy_project(tmp_path):
    from pipeline_lib.stages import run_stages

    params, paths = _project(tmp_path, _toy(), finetune={"enabled": True, "text": {"epochs": 3}})
    run_stages(params, paths, last="train_head")
    return params, paths


def test_folds_are_checkpointed_and_a_rerun_tunes_only_what_is_missing(toy_project, monkeypatch):
    from pipeline_lib.atomic import Checkpoint
    from pipeline_lib.dataset import load_manifest

    params, paths = toy_project
    calls = []
    real_tune = text_finetune.tune
    monkeypatch.setattr(text_finetune, "tune", lambda *a, **k: calls.append(len(a[2])) or real_tune(*a, **k))
    manifest = load_manifest(paths)[0]
    train, val = manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"]
    checkpoint = Checkpoint(paths.root / "ckpt.pt", "cpu")
    first = text_finetune.run(params, paths, train, val, 3, "cpu", checkpoint)
    assert calls[:2] == [8, 7] or calls[:2] == [7, 8]  # each fold tunes on its own half of the 15 texts
    assert first["mode"] == "cv" and first["folds"] == 2 and "frozen encoder" in first["reason"]
    calls.clear()
    monkeypatch.setattr(text_finetune, "keep", lambda *a: True)  # the rule itself: tests/test_decisions.py
    second = text_finetune.run(params, paths, train, val, 3, "cpu", checkpoint)
    assert calls == [15]  # the folds come from the checkpoint; only the refit on all 15 texts tunes
    assert second["gain"] == first["gain"] and second["kept"]


def test_tuning_at_learning_rate_zero_is_a_null_control_never_kept(toy_project):
    """lr 0 leaves the encoder as it was: the tuned vectors are the frozen ones, the gain is 0."""
    from pipeline_lib.atomic import Checkpoint
    from pipeline_lib.dataset import load_manifest

    params, paths = toy_project
    text = params.finetune.text.model_copy(update={"lr": 0.0})
    null = params.model_copy(update={"finetune": params.finetune.model_copy(update={"text": text})})
    manifest = load_manifest(paths)[0]
    report = text_finetune.run(null, paths, manifest[manifest["split"] == "train"], manifest[manifest["split"] == "val"],
                               3, "cpu", Checkpoint(paths.root / "null.pt", "cpu"))
    assert report["gain"] == 0.0 and report["kept"] is False and "level 0.1" in report["reason"]


def test_kept_tuned_encoder_is_evaluated_logged_and_served(toy_project, monkeypatch):
    import mlflow

    from pipeline_lib import tracking
    from pipeline_lib.stages import run_stage

    params, paths = toy_project
    monkeypatch.setattr(text_finetune, "keep", lambda *a: True)  # the kept path; the rule: tests/test_decisions.py
    report = run_stage("finetune", params, paths)
    assert report["kept"] and (paths.finetuned_encoder / "modules.json").is_file() and paths.finetune_oof.exists()
    metrics = run_stage("evaluate", params, paths)
    assert metrics["candidate"] == "finetune" and set(metrics["models"]) == {"head", "finetune"}
    run_id = tracking.log_pipeline_run(params, paths)
    mlflow.set_tracking_uri(paths.mlflow_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    expected = pd.read_csv(paths.predictions)
    manifest = pd.read_parquet(paths.manifest).set_index("item_id")
    out = model.predict(pd.DataFrame({"text": [read_text(paths.resolve(manifest.loc[i, "path"]))
                                               for i in expected["item_id"]]}))
    assert out["label"].tolist() == expected["predicted"].tolist() and len(expected) == 6
    np.testing.assert_allclose(out["confidence"], expected["confidence"], atol=1e-4)
    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    assert info.metadata["encoder_tuned"] is True
    assert json.loads(paths.finetune_meta.read_text())["backbone_spec"]["tuned"] is True


@pytest.mark.pipeline  # runs stages in its body
def test_template_texts_teach_a_class_without_labels_and_stay_out_of_val_and_test(tmp_path):
    from pipeline_lib.dataset import load_synthetic
    from pipeline_lib.stages import run_stages

    params, paths = _project(tmp_path, _toy(), data={"zero_shot_classes": ["cancel"],
                                                      "class_descriptions": {"cancel": "cancelling my subscription"}},
                             synthetic={"generator": "template"})
    run_stages(params, paths, last="train_head")
    synthetic = load_synthetic(paths, kept_only=False)
    assert len(synthetic) == 4 * 4 and set(synthetic["split"]) == {"synthetic"} and synthetic["kept"].all()
    cancel = synthetic[synthetic["label"] == "cancel"]
    assert "This text is about cancelling my subscription." in {(paths.root / p).read_text() for p in cancel["path"]}
    assert set(cancel["prompt"]) == set(params.synthetic.templates) and set(synthetic["generator"]) == {"template"}
    report = json.loads(paths.synthesize_report.read_text())
    assert report["per_class"]["cancel"] == {"generated": 4, "kept": 4, "real": 0} and paths.synthetic_preview.exists()
    from pipeline_lib.heads import load_head, predict_proba
    from pipeline_lib.text.encoder import load_text_encoder

    head, meta = load_head(paths.head, paths.head_meta)
    X = load_text_encoder("all-MiniLM-L6-v2").encode(["please cancel my subscription", "my parcel is late"])
    assert [meta["classes"][i] for i in predict_proba(head, X).argmax(1)] == ["cancel", "shipping"]


@pytest.mark.pipeline  # runs stages in its body
def test_a_local_text_generator_writes_texts_with_their_provenance(tmp_path):
    from pipeline_lib.dataset import load_synthetic
    from pipeline_lib.stages import run_stages
    from tests.helpers import build_tiny_text_generator

    model = build_tiny_text_generator(tmp_path / "tiny-gpt2")
    params, paths = _project(tmp_path, _toy(), synthetic={"generator": "text_model", "per_class": 3, "ratio": 0.2,
                                                          "text_model": {"model": str(model), "max_new_tokens": 8}})
    run_stages(params, paths, last="synthesize")
    frame = load_synthetic(paths, kept_only=False)
    assert len(frame) == 9 and set(frame["generator"]) == {"text_model"} and frame["model_hash"].nunique() == 1
    assert frame.groupby("label")["kept"].sum().to_dict() == {"password": 1, "refund": 1, "shipping": 1}  # 0.2 x 5 real
    assert set(frame.loc[~frame["kept"], "dropped_because"]) == {"ratio_cap"}
    assert all((paths.root / p).read_text() for p in frame["path"]) and frame["prompt"].str.startswith("Write").all()
    again = tmp_path / "again"
    params2, paths2 = _project(again if again.mkdir() is None else again, _toy(), **{"synthetic": params.synthetic.model_dump()})
    run_stages(params2, paths2, last="synthesize")
    assert load_synthetic(paths2, kept_only=False)["item_id"].tolist() == frame["item_id"].tolist()  # seeded
