"""Choosing on every labelled image: folds, the CV table, the refit, tiny classes, test untouched."""

import json

import numpy as np
import pytest

from pipeline_lib.config import parse_params
from pipeline_lib.dataset import AUGMENTED, load_manifest
from pipeline_lib.features import load_features
from pipeline_lib.heads import HeadRecipe, fit_head, load_head, predict_proba
from pipeline_lib.image import finetune as image_finetune
from pipeline_lib.paths import Paths
from pipeline_lib.selection import best, oof_matrix, paired_bootstrap, stratified_folds, summarise
from pipeline_lib.stages import evaluate, finetune, ingest, run_stages, train_head
from pipeline_lib.training_set import TrainingSet, fit_recipe
from tests.helpers import Interrupted, interrupt_after_epochs, write_folder_dataset


def test_folds_are_stratified_disjoint_and_cover_every_image_once_per_repeat():
    y = np.repeat([0, 1, 2], [12, 7, 5])
    folds = stratified_folds(y, folds=5, repeats=3, seed=0)
    assert len(folds) == 15
    for r in range(3):
        held = np.concatenate([f.held for f in folds if f.repeat == r])
        assert sorted(held) == list(range(len(y)))  # each image held out exactly once
    for f in folds:
        assert not set(f.train) & set(f.held) and len(f.train) + len(f.held) == len(y)
        counts = np.bincount(y[f.held], minlength=3)
        assert np.all(np.abs(counts - np.bincount(y) / 5) <= 1)  # each class spread evenly
    assert not all(np.array_equal(a.held, b.held) for a, b in zip(folds[:5], folds[5:10]))  # repeats reshuffle
    again = stratified_folds(y, folds=5, repeats=3, seed=0)
    assert all(np.array_equal(a.held, b.held) for a, b in zip(folds, again))  # seeded


def test_small_classes_reduce_the_folds_and_a_single_image_always_trains():
    y = np.array([0, 0, 1, 1, 1, 2])
    folds = stratified_folds(y, folds=5, repeats=1, seed=1)
    assert len(folds) == 2  # the smallest class with two images allows two folds
    assert all(5 in f.train and 5 not in f.held for f in folds)  # class 2 has one image: never held out
    assert sorted(np.concatenate([f.held for f in folds])) == [0, 1, 2, 3, 4]


def _blobs(n_per_class, n_classes=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y


def test_a_candidate_worse_by_construction_is_never_chosen():
    X, y = _blobs(6)
    p = parse_params({}).train_head
    shuffled = np.random.default_rng(0).permutation(y)
    folds = stratified_folds(y, 5, 3, seed=0)
    table = {}
    for name, labels in (("shuffled labels", shuffled), ("true labels", y)):  # the bad one listed first
        oof = oof_matrix(len(y), 3, 3)
        for f in folds:
            head = fit_head(X[f.train], labels[f.train], 3, HeadRecipe("linear", 1.0), p, 0).head
            oof[f.repeat][f.held] = predict_proba(head, X[f.held])
        table[name] = summarise(y, oof, 3)
    assert best(table, "macro_f1") == "true labels" and best(table, "accuracy") == "true labels"
    assert best(table, "macro_f1", tie_se=1.0) == "true labels"  # far apart: never a tie
    assert table["true labels"]["accuracy"] > 0.9 > 0.6 > table["shuffled labels"]["accuracy"]


def test_paired_bootstrap_gain_and_its_uncertainty():
    y = np.repeat([0, 1], 50)
    right = np.eye(2)[y]
    wrong_half = right.copy()
    wrong_half[::2] = right[::2, ::-1]
    out = paired_bootstrap(y, wrong_half, right, 2, "accuracy", seed=0)
    assert out["gain"] == pytest.approx(0.5) and 0.02 < out["se"] < 0.1
    assert paired_bootstrap(y, right, right, 2, "macro_f1", seed=0) == {"gain": 0.0, "se": 0.0, "n": 100}


def test_linear_head_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    X, y = _blobs(10, n_classes=4, seed=3)
    p = parse_params({"train_head": {"class_weighting": "none"}}).train_head
    head = fit_head(X, y, 4, HeadRecipe("linear", 0.3), p, 0).head
    ref = LogisticRegression(C=0.3, max_iter=2000, tol=1e-6).fit(X, y)
    np.testing.assert_allclose(predict_proba(head, X), ref.predict_proba(X), atol=1e-3)
    binary = fit_head(X[y < 2], y[y < 2], 4, HeadRecipe("linear", 0.3), p, 0).head  # two of four classes seen
    ref2 = LogisticRegression(C=0.3, max_iter=2000, tol=1e-6).fit(X[y < 2], y[y < 2])
    proba = predict_proba(binary, X)
    np.testing.assert_allclose(proba[:, :2], ref2.predict_proba(X), atol=1e-3)
    assert proba[:, 2:].max() < 1e-9  # unseen classes are never predicted


RAW = {"data": {"source": "folder", "shots_per_class": None, "test_fraction": 0.25},
       "backbone": {"resolution": 32}, "augment": {"copies": 1},
       "train_head": {"C": [0.1, 1.0], "use_augmented": True},
       "selection": {"folds": 3, "repeats": 2},
       "finetune": {"epochs": 2, "batch_size": 8, "unfreeze_blocks": 1, "patience": 2},
       "evaluate": {"bootstrap": 0}, "mlflow": {"log_model": False}}


@pytest.fixture(scope="module")
def cv_project(tmp_path_factory):
    """Three classes; `bag` has 3 images: 1 test + 2 labelled, the smallest class CV must handle."""
    root = tmp_path_factory.mktemp("cv")
    write_folder_dataset(root / "raw", per_class=8, classes=("trouser", "sneaker"))
    write_folder_dataset(root / "raw", per_class=3, classes=("bag",), seed=1)
    raw = json.loads(json.dumps(RAW))
    raw["data"]["path"] = str(root / "raw")
    params, paths = parse_params(raw), Paths.for_root(root)
    run_stages(params, paths, last="train_head")
    return params, paths


def test_cv_mode_uses_every_label_and_refits_on_all(cv_project):
    params, paths = cv_project
    report = json.loads(paths.ingest_report.read_text())
    assert report["selection_mode"] == "cv" and report["counts"]["val"] == 0
    assert report["per_class"]["bag"] == {"test": 1, "train": 2}
    sel = json.loads(paths.selection_report.read_text())
    assert sel["mode"] == "cv" and sel["folds"] == 2 and sel["repeats"] == 2  # bag's 2 images allow 2 folds
    X, y, _ = load_features(paths, "train")
    assert sel["n_labelled"] == sel["refit_on"] == len(y) == 14
    assert set(sel["table"]) == {"linear C=0.1", "linear C=1", "linear C=0.1 + flip TTA", "linear C=1 + flip TTA"}
    assert sel["winner"] in sel["table"] and sel["table"][sel["winner"]]["n_scored"] == 14
    # the deployed head is the winner refitted on every labelled image (and their augmented copies)
    head, meta = load_head(paths.head, paths.head_meta)
    data = TrainingSet(params, paths)
    Xr, yr, wr = data.training(np.arange(len(y)))
    n_aug = len(load_features(paths, AUGMENTED)[1])
    assert n_aug > 7 and len(yr) == 14 + n_aug  # 14 labelled + their augmented copies
    refit = fit_head(Xr, yr, 3, HeadRecipe(**meta["recipe"]), params.train_head, params.seed, wr).head
    np.testing.assert_allclose(predict_proba(head, X), predict_proba(refit, X), atol=1e-6)


def test_augmented_copies_of_held_out_images_never_train_their_fold(cv_project):
    params, paths = cv_project
    data = TrainingSet(params, paths)
    _, _, src = data.aug
    assert len(src) > 7 and (src >= 0).all() and (src < 14).all()  # each copy knows its source image
    rows = np.arange(0, 14, 2)
    _, y, _ = data.training(rows)
    assert len(y) == 7 + np.isin(src, rows).sum() < 14 + len(src)  # 7 images + their copies only


def test_selection_never_reads_test_features(cv_project):
    params, paths = cv_project
    before = paths.selection_report.read_text()
    X, y, ids = load_features(paths, "test")
    saved = paths.features("test").read_bytes()
    try:
        np.savez(paths.features("test"), X=np.full_like(X, np.nan), y=np.zeros_like(y), item_id=ids)
        train_head.run(params, paths)
        assert paths.selection_report.read_text() == before
    finally:
        paths.features("test").write_bytes(saved)
        train_head.run(params, paths)


def test_finetune_at_learning_rate_zero_is_never_kept_and_the_head_is_deployed(cv_project):
    """A null control: fine-tuning with lr 0 reproduces each fold's probe, so its gain is exactly 0."""
    params, paths = cv_project
    null = params.model_copy(update={"finetune": params.finetune.model_copy(update={"lr": 0.0})})
    report = finetune.run(null, paths)
    assert report["mode"] == "cv" and report["folds"] == 2 and len(report["curve"]) == report["epochs_run"] + 1
    assert report["kept"] is False and report["gain"] == 0.0 and not paths.finetuned_model.exists()
    assert report["reason"].startswith("fine-tuning not kept") and "level 0.1" in report["reason"]
    metrics = evaluate.run(null, paths)
    assert metrics["candidate"] == "head" + ("_tta" if metrics["selection"]["tta"] else "")
    assert set(metrics["models"]) <= {"head", "head_tta"}


def test_kept_finetune_is_refitted_on_every_label_and_evaluated(cv_project, monkeypatch):
    params, paths = cv_project
    monkeypatch.setattr(image_finetune, "keep", lambda *a: True)  # the decision itself: tests/test_decisions.py
    report = finetune.run(params, paths)
    assert report["kept"] and paths.finetuned_model.exists() and report["reason"].startswith("fine-tuning kept")
    assert report["n_train"] == 14 and report["refit_epochs"] == report["best_epoch"] > 0
    assert report["gain_optimism"] == pytest.approx(report["gain_naive"] - report["gain"])
    assert report["candidates"] == report["epochs_run"] + 1 + (len(params.finetune.wise_alphas) - 1
                                                               if report["best_epoch"] else 0)
    metrics = evaluate.run(params, paths)
    assert metrics["selection"]["mode"] == "cv" and "finetune" in metrics["selection"]
    assert metrics["candidate"] == "finetune" + ("_tta" if metrics["selection"]["tta"] else "")
    assert metrics["calibration"]["temperature_fitted_on"] == "out-of-fold predictions"
    assert all("val_accuracy" not in m for m in metrics["models"].values())


def test_self_training_respects_threshold_and_ratio_and_reports_accuracy():
    X, y = _blobs(5, n_classes=3, seed=4)
    U, truth = _blobs(40, n_classes=3, seed=4)
    params = parse_params({"semi_supervised": {"source": "unused", "threshold": 0.8, "ratio": 2.0, "weight": 0.5}})

    class Data:  # the TrainingSet interface fit_recipe uses
        def __init__(self):
            self.y, self.U, self.U_truth = y, U, truth

        def training(self, rows):
            return X[rows], y[rows], np.ones(len(rows), np.float32)

    rows = np.arange(len(y))
    plain, info = fit_recipe(Data(), rows, HeadRecipe("linear", 1.0, False), params, 3, 0)
    assert info == {}
    head, info = fit_recipe(Data(), rows, HeadRecipe("linear", 1.0, True), params, 3, 0)
    assert 0 < info["pseudo_labels"] <= 3 * 2 * 5 and info["unlabeled"] == 120  # ratio 2 x 5 labelled per class
    assert info["pseudo_label_accuracy"] > 0.9
    strict = parse_params({"semi_supervised": {"source": "unused", "threshold": 1.0}})
    assert fit_recipe(Data(), rows, HeadRecipe("linear", 1.0, True), strict, 3, 0)[1]["pseudo_labels"] == 0


def test_unlabelled_folder_is_ingested_apart_and_never_reaches_val_or_test(tmp_path):
    import shutil

    write_folder_dataset(tmp_path / "raw", per_class=8, classes=("trouser", "sneaker"))
    write_folder_dataset(tmp_path / "pool", per_class=6, classes=("trouser", "sneaker"), seed=5)
    raw = json.loads(json.dumps(RAW))
    raw["data"].update(path=str(tmp_path / "raw"), unlabeled=str(tmp_path / "pool"))
    raw["semi_supervised"] = {"source": "folder", "threshold": 0.5}
    params, paths = parse_params(raw), Paths.for_root(tmp_path)
    ingest.run(params, paths)
    manifest = load_manifest(paths)[0]
    test_file = manifest.loc[manifest["split"] == "test", "source"].iloc[0]
    shutil.copy(test_file, tmp_path / "pool" / "copy_of_a_test_image.png")  # kept once: as the test image
    report = ingest.run(params, paths)
    manifest = load_manifest(paths)[0]
    repeated = [d for d in report["duplicates"] if "/pool/" in d["file"]]  # the sample may repeat an image
    n_unlabeled = 13 - len(repeated)
    assert report["counts"]["unlabeled"] == n_unlabeled
    assert any(d["file"].endswith("copy_of_a_test_image.png") for d in repeated)
    assert (manifest.loc[manifest["split"] == "unlabeled", "label_idx"] == -1).all()
    run_stages(params, paths, first="synthesize", last="train_head")
    U, truth, u_ids = load_features(paths, "unlabeled")
    assert len(U) == n_unlabeled and (truth == -1).all()
    for split in ("train", "val", "test"):
        assert not set(u_ids) & set(load_features(paths, split)[2])
    sel = json.loads(paths.selection_report.read_text())
    assert any(name.endswith("self-training") for name in sel["table"])
    assert any(name.endswith("self-training + flip TTA") for name in sel["table"])
    if sel["recipe"]["self_training"]:
        assert sel["pseudo_labels"]["unlabeled"] == n_unlabeled
        assert sel["pseudo_labels"]["pseudo_label_accuracy"] is None


def test_cv_finetune_stopped_after_an_epoch_resumes_to_the_same_result(cv_project, monkeypatch):
    import torch

    params, paths = cv_project
    monkeypatch.setattr(image_finetune, "keep", lambda *a: True)  # the refit is resumed too
    full = finetune.run(params, paths)
    assert full["kept"]
    weights = torch.load(paths.finetuned_model, weights_only=True)
    interrupt_after_epochs(monkeypatch, 1)
    with pytest.raises(Interrupted):
        finetune.run(params, paths)
    monkeypatch.undo()
    monkeypatch.setattr(image_finetune, "keep", lambda *a: True)
    ckpt = paths.finetune_checkpoint(finetune.config_hash(params, paths))
    assert ckpt.exists()
    resumed = finetune.run(params, paths)
    assert resumed["resumed_from_epoch"] == 1 and resumed["kept"] == full["kept"]
    assert [c["log_loss"] for c in resumed["curve"]] == pytest.approx([c["log_loss"] for c in full["curve"]], abs=1e-4)
    assert resumed["gain"] == pytest.approx(full["gain"], abs=1e-6)
    again = torch.load(paths.finetuned_model, weights_only=True)
    assert all(torch.allclose(again[k].float(), v.float(), atol=1e-4) for k, v in weights.items())
    assert not ckpt.exists()


def test_fine_tuning_adds_the_probes_confident_pseudo_labels_never_labelled_images(tmp_path):
    from pipeline_lib.heads import load_head

    write_folder_dataset(tmp_path / "raw", per_class=12)
    raw = json.loads(json.dumps(RAW))
    raw["data"].update(path=str(tmp_path / "raw"), shots_per_class=4)
    raw["semi_supervised"] = {"source": "unused", "threshold": 0.3, "ratio": 1.0, "finetune": True}
    params, paths = parse_params(raw), Paths.for_root(tmp_path)
    run_stages(params, paths, last="finetune")
    report = json.loads(paths.finetune_report.read_text())
    # ratio 1: at most each class's labelled count (4 per class in the refit, 2 in a 2-fold run)
    assert 0 < report["finetune_pseudo_labels"] <= 12 and report["finetune_pseudo_label_accuracy"] is not None
    manifest = load_manifest(paths)[0]
    real = manifest[manifest["split"] == "train"]
    head, _ = load_head(paths.head, paths.head_meta)
    rows, info = image_finetune._pseudo_labelled(params, paths, head, real, None, 3)
    assert len(rows) == info["finetune_pseudo_labels"] > 0 and set(rows["split"]) == {"unused"}
    truth = manifest.set_index("item_id").loc[rows["item_id"], "label_idx"].to_numpy()
    assert info["finetune_pseudo_label_accuracy"] == pytest.approx((truth == rows["label_idx"].to_numpy()).mean())
    off = parse_params({**raw, "semi_supervised": {**raw["semi_supervised"], "finetune": False}})
    assert image_finetune._pseudo_labelled(off, paths, head, real, None, 3)[0].empty


def test_one_label_per_class_decides_nothing_and_says_so(tmp_path):
    """2 images per class: 1 test, 1 labelled. No fold can score anything, so nothing is chosen on
    evidence: the default recipe, no fine-tuning, no forecast; no NaN scores and no warnings."""
    import warnings

    from pipeline_lib.stages import run_stage

    write_folder_dataset(tmp_path / "raw", per_class=2)
    params = parse_params({"data": {"source": "folder", "path": str(tmp_path / "raw"), "shots_per_class": None,
                                    "min_per_class": 1}, "backbone": {"resolution": 32}, "finetune": {"epochs": 1},
                           "mlflow": {"log_model": False}, "evaluate": {"bootstrap": 0}})
    paths = Paths.for_root(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no mean of an empty slice, no NaN
        run_stages(params, paths, last="evaluate")
        advice = run_stage("advise", params, paths)
    sel = json.loads(paths.selection_report.read_text())
    assert sel["mode"] == "none" and sel["table"] == {} and sel["winner"] == "linear C=1"
    assert sel["reason"].startswith("too few labels to decide") and "untested" in sel["reason"]
    ft = json.loads(paths.finetune_report.read_text())
    assert ft["kept"] is False and ft["reason"].startswith("fine-tuning not tried: too few labels")
    assert advice["forecast"] is None and "expected_now" not in advice and paths.advice_curve_png.exists()
    assert advice["summary"][0].startswith("Too few labels to decide")
    from pipeline_lib.summary import summary

    assert "Model: head: too few labels to decide" in summary(paths)  # what `make run` prints last


def test_finetune_and_evaluates_choices_never_read_test_items(cv_project, monkeypatch):
    """The test images replaced by noise and their features by random vectors: finetune decides exactly as
    before, and evaluate deploys the same candidate with the same temperature (only the test
    scores change)."""
    import shutil

    from PIL import Image

    params, paths = cv_project
    clean_ft = finetune.run(params, paths)
    clean = evaluate.run(params, paths)
    manifest = load_manifest(paths)[0]
    test_files = [paths.resolve(p) for p in manifest.loc[manifest["split"] == "test", "path"]]
    backup = paths.root / "test_backup"
    backup.mkdir(exist_ok=True)
    X, y, ids = load_features(paths, "test")
    saved = paths.features("test").read_bytes()
    try:
        for k, f in enumerate(test_files):
            shutil.copy(f, backup / f"{k}.png")
            size = Image.open(f).size
            Image.fromarray(np.random.default_rng(k).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(f)
        noise = np.random.default_rng(0).normal(0, 1, X.shape).astype(X.dtype)
        np.savez(paths.features("test"), X=noise, y=np.zeros_like(y), item_id=ids)
        poisoned_ft = finetune.run(params, paths)
        for key in ("kept", "gain", "gain_naive", "best_epoch", "wise_alpha", "curve"):
            assert poisoned_ft[key] == clean_ft[key], key
        poisoned = evaluate.run(params, paths)
        assert poisoned["candidate"] == clean["candidate"]
        assert poisoned["calibration"]["temperature"] == pytest.approx(clean["calibration"]["temperature"])
    finally:
        for k, f in enumerate(test_files):
            shutil.copy(backup / f"{k}.png", f)
        paths.features("test").write_bytes(saved)


def test_fold_runs_side_by_side_equal_fold_runs_one_after_the_other(cv_project, monkeypatch):
    """With two CPU threads the two fold runs train side by side, one thread each; each draws
    from its own generators, so the decision is the one the runs make one after the other."""
    import threading

    params, paths = cv_project
    lanes = []
    original = image_finetune.Trainer.train_epoch

    def train_epoch(self, *args, **kwargs):
        lanes.append(threading.current_thread() is threading.main_thread())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(image_finetune.Trainer, "train_epoch", train_epoch)
    reports = {}
    for threads in (1, 2):
        lanes.clear()
        runtime = params.runtime.model_copy(update={"num_threads": threads})
        reports[threads] = finetune.run(params.model_copy(update={"runtime": runtime}), paths)
        assert all(lanes) if threads == 1 else not any(lanes)  # in the main thread, or in two others
    # equal up to the forward passes that score the folds (1 thread, or 2: summation order, ~1e-8)
    assert len(reports[1]["curve"]) == 3  # the probe + 2 epochs
    for side_by_side, one_after_the_other in zip(reports[2]["curve"], reports[1]["curve"]):
        assert side_by_side == pytest.approx(one_after_the_other, abs=1e-5)
    assert reports[2]["gain"] == pytest.approx(reports[1]["gain"], abs=1e-5)
    assert reports[2]["kept"] == reports[1]["kept"]
