"""The advise stage: the learning-curve extrapolation, the suspicious-label ranking, the
suggestions for labelling and the report, on real stages (sample images, toy texts)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pipeline_lib
from pipeline_lib import advise
from pipeline_lib.config import parse_params
from pipeline_lib.heads import HeadRecipe
from pipeline_lib.paths import Paths


def test_extrapolation_recovers_a_known_power_law():
    rng = np.random.default_rng(0)
    sizes = np.tile([10.0, 20.0, 40.0, 80.0], 3)
    truth = lambda n: 0.9 - 0.8 * np.power(n, -0.5)  # noqa: E731
    scores = truth(sizes) + rng.normal(0, 0.005, len(sizes))
    out = advise.extrapolate(sizes, scores, [160.0, 320.0], seed=0)
    assert out["params"]["c"] == pytest.approx(0.5, abs=0.15)
    for n, predicted, low, high in zip(out["at"], out["predicted"], out["low"], out["high"]):
        assert abs(predicted - truth(n)) < 0.015 and low <= truth(n) <= high


def _blobs(seed: int = 0, per_class: int = 15, classes: int = 3, dim: int = 8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    return (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y


def test_a_planted_mislabelled_example_is_flagged_first():
    X, y = _blobs()
    noisy = y.copy()
    noisy[7] = 2  # a class-0 item labelled 2
    fit = advise.head_fitter(HeadRecipe("linear", 1.0), parse_params({}).train_head, 3)
    curve = advise.learning_curve(X, noisy, 3, fit, [0.25, 0.5, 1.0], repeats=2, folds=5, seed=0, metric="macro_f1")
    ranked = advise.suspect_labels(noisy, curve.oof)
    assert ranked["index"][0] == 7 and ranked["suggested"][0] == 0 and ranked["flagged"][0]
    assert ranked["flagged"].sum() <= 2  # the clean items stay unflagged (at most one borderline)
    assert [c[:2] for c in advise.conflicting_duplicates(np.r_[X, X[:1]], np.r_[y, [1]], 0.999)] == [(0, 45)]


def test_typical_picks_cover_the_clusters_no_label_covers():
    X, y = _blobs(per_class=30)
    labelled = np.flatnonzero(y == 0)[:3]  # labels only in cluster 0
    pool = np.setdiff1d(np.arange(len(y)), labelled)
    chosen = advise.typical(X[labelled], X[pool], 2, seed=0)
    assert sorted(y[pool][chosen].tolist()) == [1, 2]


@pytest.fixture(scope="module")
def sample_project(tmp_path_factory):
    """The embedded image sample at 5 labels per class (the rest is the unlabelled pool), every
    stage up to evaluate (fine-tuning off: seconds)."""
    from pipeline_lib.stages import run_stages

    root = tmp_path_factory.mktemp("advise")
    sample = Path(pipeline_lib.__file__).parent / "sample_data" / "fashion_mnist_sample.npz"
    params = parse_params({"data": {"shots_per_class": 5, "sample_test_per_class": 20, "path": str(sample)},
                           "finetune": {"enabled": False},
                           "evaluate": {"bootstrap": 0}, "mlflow": {"log_model": False},
                           "advise": {"repeats": 2, "label_next": 12}})
    paths = Paths.for_root(root)
    run_stages(params, paths, last="evaluate")
    return params, paths


@pytest.mark.parametrize("strategy", ["typical", "margin"])
def test_suggestions_are_unlabelled_items_only(sample_project, strategy):
    from pipeline_lib.stages import run_stage

    params, paths = sample_project
    params = parse_params({**params.model_dump(), "advise": {**params.advise.model_dump(), "strategy": strategy}})
    report = run_stage("advise", params, paths)
    suggested = pd.read_csv(paths.label_next_csv)
    manifest = pd.read_parquet(paths.manifest)
    used = set(manifest.loc[manifest["split"].isin(["train", "val", "test"]), "path"])
    assert len(suggested) == 12 and not set(suggested["path"]) & used and suggested["path"].is_unique
    assert set(suggested["path"]) <= set(manifest.loc[manifest["split"] == "unused", "path"])
    assert report["label_next"]["strategy"] == strategy and suggested["reason"].str.len().min() > 10
    assert set(suggested["suggested_label"]) <= set(json.loads((paths.prepared_dir / "classes.json").read_text()))


def test_auto_picks_uncertain_items_from_5_labels_and_the_report_is_written(sample_project):
    from pipeline_lib.stages import run_stage

    params, paths = sample_project
    report = run_stage("advise", params, paths)
    assert report["label_next"]["strategy"] == "margin"  # 5 labels per class: not below advise.typical_below
    assert report["forecast"]["x2"]["labels"] == 2 * report["n_labelled"] == 100
    fit, curve = report["fit"], report["curve"]
    for key, n in (("now", 50), ("x2", 100), ("x4", 200)):  # the forecast is the fitted law at 1x, 2x, 4x the labels
        expected = float(np.clip(advise.power_law(n, fit["a"], fit["b"], fit["c"]), 0, 1))
        assert report["forecast"][key]["predicted"] == pytest.approx(expected, abs=1e-9)
    top = max(curve["fractions"])
    sizes = [n for n, f in zip(curve["sizes"], curve["fractions"]) if f == top]
    measured = np.mean([s for s, f in zip(curve["scores"], curve["fractions"]) if f == top])
    law = advise.power_law(np.mean(sizes), fit["a"], fit["b"], fit["c"])
    assert abs(law - measured) < 0.05  # the fitted law passes by what was measured at the largest size
    text = paths.advice_md.read_text()
    assert "Doubling your labels (50 -> 100)" in text and "## 4. Data health" in text and paths.advice_curve_png.exists()
    assert len(pd.read_csv(paths.suspect_labels_csv)) == params.advise.suspects


def test_report_renders_with_a_class_of_one_text(tmp_path):
    from pipeline_lib.stages import run_stages
    from tests.test_text_finetune import _toy

    frame = _toy()
    frame = frame[~((frame["label"] == "password") & (frame["split"] == "train"))]
    frame = pd.concat([frame, pd.DataFrame([{"text": "I forgot my password", "label": "password", "split": "train"}])])
    frame.to_csv(tmp_path / "texts.csv", index=False)
    params = parse_params({"data": {"source": "manifest", "path": str(tmp_path / "texts.csv"), "shots_per_class": None,
                                    "min_per_class": 1}, "evaluate": {"tta": "none", "bootstrap": 0},
                           "finetune": {"enabled": False}, "mlflow": {"log_model": False}})
    paths = Paths.for_root(tmp_path)
    report = run_stages(params, paths)["advise"]
    assert report["health"]["per_class"]["password"] == 1 and report["health"]["at_risk"] == ["password"]
    text = paths.advice_md.read_text()
    assert "| password | 1 |" in text and "Classes at risk" in text and "Nothing suggested" in text
    assert pd.read_csv(paths.label_next_csv).empty  # a DVC output: written, with its header, even when empty
    assert "I forgot my password" not in pd.read_csv(paths.suspect_labels_csv)["item"].tolist()  # never held out


def test_disabled_removes_the_outputs(sample_project):
    from pipeline_lib.stages import run_stage

    params, paths = sample_project
    run_stage("advise", params, paths)
    off = parse_params({**params.model_dump(), "advise": {"enabled": False}})
    assert run_stage("advise", off, paths) == {"enabled": False}
    assert not paths.advice_md.exists() and not paths.label_next_csv.exists()


def test_an_interval_a_hair_below_its_value_still_plots(tmp_path):
    """Every CV score 1.0: the fitted bound can fall a floating-point hair below the prediction."""
    from pipeline_lib.plots import plot_learning_curve_fit

    sizes = np.tile([5.0, 10.0, 20.0], 2)
    grid = {"at": [5.0, 40.0], "predicted": [1.0, 1.0], "low": [1.0, 1.0], "high": [1.0, 1.0], "level": 0.9}
    marks = {20: (1.0, 1.0 + 1e-15, 1.0 - 1e-15, "now")}
    plot_learning_curve_fit(sizes, np.ones(6), grid, marks, "macro_f1", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_typical_fill_in_takes_the_most_typical_items_not_the_first():
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.05, (30, 4)) + np.array([1.0, 0, 0, 0])   # a tight cluster
    outliers = rng.normal(0, 1.0, (10, 4))                             # listed first in the pool
    pool = np.concatenate([outliers, dense])
    typicality = advise.typicality(pool)
    assert typicality[10:].min() > typicality[:10].max()  # what typical() fills in with, most typical first


def test_typicality_of_a_large_pool_looks_for_neighbours_in_a_sample_and_ranks_alike():
    rng = np.random.default_rng(1)
    pool = np.concatenate([rng.normal(0, 0.05, (300, 8)) + 1.0, rng.normal(0, 1.0, (300, 8))])
    exact, sampled = advise.typicality(pool), advise.typicality(pool, reference=150)
    assert sampled.shape == exact.shape and np.isfinite(sampled).all()
    assert np.corrcoef(np.argsort(np.argsort(exact)), np.argsort(np.argsort(sampled)))[0, 1] > 0.9
    assert np.mean(sampled[:300] > np.median(sampled)) > 0.95  # the tight cluster is the typical half


def test_clean_labels_give_an_estimate_of_about_zero_wrong_and_flipped_ones_are_counted():
    """A model about 80 % right. Clean labels: some flagged (hard items), about none wrong. 40
    confident items relabelled: counted, within a factor of two (the noise model assumes relabels
    drawn uniformly; it overstates more when the model is weak)."""
    rng = np.random.default_rng(1)
    n, k = 400, 4
    logits = rng.normal(0, 3.0, (n, k))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=p) for p in proba])  # labels exactly as the model expects: clean
    clean = advise.estimated_wrong_labels(y, proba, seed=0)
    assert clean["flagged"] > 10 and clean["estimate"] < 5 and clean["interval"][1] < 10  # hard, not wrong
    overconfident = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # the same, too sure of itself
    assert advise.estimated_wrong_labels(y, overconfident, seed=0)["estimate"] < 15
    flipped = y.copy()
    confident = np.flatnonzero(proba.max(1) > 0.8)[:40]
    flipped[confident] = (proba[confident].argmax(1) + 1) % k  # 40 confident items given a wrong label
    noisy = advise.estimated_wrong_labels(flipped, proba, seed=0)
    assert 30 <= noisy["estimate"] <= 80 and noisy["interval"][0] > clean["interval"][1]
