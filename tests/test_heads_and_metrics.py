import numpy as np
import pytest
import torch

from pipeline_lib.config import TrainHeadParams
from pipeline_lib.heads import HeadRecipe, class_weights, fit_head, load_head, predict_proba, save_head, train_head
from pipeline_lib.stages.evaluate import top_confusions
from pipeline_lib.stats import classification_metrics


def _blobs(n_per_class, seed, dim=16, classes=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, dim))
    X = np.concatenate([c + rng.normal(0, 1, (n_per_class, dim)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per_class)
    return X, y


@pytest.mark.parametrize("recipe", [HeadRecipe("linear", 1.0), HeadRecipe("mlp", None)])
def test_head_learns_a_separable_toy_set(recipe):
    X, y = _blobs(20, seed=0)
    Xv, yv = _blobs(10, seed=0)
    result = fit_head(X, y, 3, recipe, TrainHeadParams(lr=0.01, dropout=0.0), 0, None, Xv, yv)
    Xt, yt = _blobs(30, seed=0)
    assert (predict_proba(result.head, Xt).argmax(1) == yt).mean() > 0.95
    if recipe.kind == "mlp":
        assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_head_training_is_seeded_and_early_stops():
    X, y = _blobs(10, seed=1)
    Xv, yv = _blobs(10, seed=2)  # other centres: val loss rises, early stopping triggers
    p = TrainHeadParams(max_epochs=2000, patience=10, lr=0.05)
    a = train_head(X, y, Xv, yv, 3, p, seed=3)
    b = train_head(X, y, Xv, yv, 3, p, seed=3)
    assert a.epochs_run < 2000 and a.epochs_run == b.epochs_run
    for key, value in a.head.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), b.head.state_dict()[key].numpy())


def test_balanced_class_weights():
    w = class_weights(np.array([0, 0, 0, 1]), 3, "balanced").numpy()
    np.testing.assert_allclose(w, [4 / 9, 4 / 3, 0.0])
    assert class_weights(np.array([0, 1]), 2, "none").tolist() == [1.0, 1.0]


def test_head_round_trips_through_files(tmp_path):
    X, y = _blobs(10, seed=0)
    result = train_head(X, y, None, None, 3, TrainHeadParams(max_epochs=5), seed=0)
    save_head(result.head, tmp_path / "h.pt", tmp_path / "h.json", {"classes": ["a", "b", "c"]})
    head, meta = load_head(tmp_path / "h.pt", tmp_path / "h.json")
    assert meta["classes"] == ["a", "b", "c"]
    np.testing.assert_allclose(predict_proba(head, X), predict_proba(result.head, X), rtol=1e-6)


def test_metrics_on_known_predictions():
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["per_class"]["a"]["recall"] == pytest.approx(3 / 4)
    assert m["per_class"]["a"]["precision"] == pytest.approx(3 / 4)
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["c"]["recall"] == pytest.approx(1 / 2)
    f1 = [2 * 0.75 * 0.75 / 1.5, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    cm = np.array([[3, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert top_confusions(cm, ["a", "b", "c"], 5) == [
        {"actual": "a", "predicted": "b", "count": 1}, {"actual": "c", "predicted": "a", "count": 1}]


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_data():
    from pipeline_lib.stats import bootstrap_ci, macro_f1_from_labels

    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 2000):
        y = rng.integers(0, 4, n)
        pred = np.where(rng.random(n) < 0.8, y, rng.integers(0, 4, n))
        ci = bootstrap_ci(y, pred, 4, n_boot=500, seed=1)
        acc, f1 = float((y == pred).mean()), macro_f1_from_labels(y, pred, 4)
        assert ci["accuracy"][0] <= acc <= ci["accuracy"][1]
        assert ci["macro_f1"][0] <= f1 <= ci["macro_f1"][1]
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(n): 2000 vs 50 images is ~6x narrower
    assert bootstrap_ci(y, pred, 4, 200, seed=3) == bootstrap_ci(y, pred, 4, 200, seed=3)


def test_fast_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    from pipeline_lib.stats import macro_f1_from_labels

    rng = np.random.default_rng(0)
    for _ in range(50):
        k, n = int(rng.integers(2, 6)), int(rng.integers(1, 40))
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        assert macro_f1_from_labels(y, p, k) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))


def test_temperature_scaling_undoes_overconfidence():
    from pipeline_lib.stats import expected_calibration_error, fit_temperature, softmax

    rng = np.random.default_rng(0)
    n, k = 4000, 5
    true_logits = rng.normal(0, 1.5, (n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(true_logits)])  # labels drawn from the model
    overconfident = true_logits * 3.0
    t = fit_temperature(overconfident[:2000], y[:2000])
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(softmax(overconfident[2000:]), y[2000:])
    after = expected_calibration_error(softmax(overconfident[2000:], t), y[2000:])
    assert after < before / 2 and after < 0.05


def test_ece_of_known_predictions():
    from pipeline_lib.stats import expected_calibration_error

    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bin 0.9: confidence 0.9, accuracy 0.5; bin 0.6: confidence 0.6, accuracy 1.0
    assert expected_calibration_error(proba, y, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_learning_curve_advice_and_plot(tmp_path):
    from pipeline_lib.learning_curve import doubling_gain, plot_learning_curve, recommend

    assert doubling_gain([5, 10, 20, 40], [0.60, 0.65, 0.70, 0.75]) == pytest.approx(0.05)
    results = {"head": {5: [0.60, 0.62], 10: [0.66, 0.66], 20: [0.70, 0.72]},
               "finetune": {5: [0.58, 0.60], 10: [0.68, 0.70], 20: [0.76, 0.76]}}
    advice = recommend(results, at_shots=20)
    assert "use **finetune**" in advice and "76.0%" in advice and "+5.0%" in advice
    assert "about 8.5% accuracy" in advice  # least-squares slope of 59, 69, 76 % on log2(5, 10, 20)
    assert "use **head**" in recommend(results, at_shots=7)  # nearest curve point below: 5
    plot_learning_curve(results, tmp_path / "lc.png")
    assert (tmp_path / "lc.png").stat().st_size > 5_000


def test_learning_curve_advice_for_a_single_strategy():
    from pipeline_lib.learning_curve import recommend

    advice = recommend({"finetune": {10: [0.7], 20: [0.75]}}, at_shots=20)
    assert "use **finetune**: 75.0% test accuracy." in advice and "next best" not in advice


def test_flip_tta_averages_the_mirror_images_probabilities(backbone_small):
    from pipeline_lib.heads import Head
    from pipeline_lib.image.model import Classifier
    from pipeline_lib.image.networks import FinetuneModel

    torch.manual_seed(0)
    network = FinetuneModel(backbone_small.preprocess, backbone_small.model, Head(backbone_small.feature_dim, 3))
    plain = Classifier(network, ["a", "b", "c"]).eval()
    tta = Classifier(network, ["a", "b", "c"], tta=True).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tta(x), (plain(x) + plain(x.flip(-1))) / 2)
        assert torch.allclose(tta(x), tta(x.flip(-1)), atol=1e-6)  # mirror-invariant by construction
