"""The decision code with known answers: the bias-corrected gain, the keep rule under null and
real gains, WiSE-FT's pieces and the tie rule. No training: out-of-fold predictions are built so
that the truth is known."""

import numpy as np
import pytest
import torch

from pipeline_lib.image.finetuning import interpolate, pick_alpha
from pipeline_lib.selection import best, bias_corrected, keep, keep_threshold, paired_bootstrap, scores, weighted_scores
from tests.helpers import noisy_curve


def _old_rule(y, proba, n_classes, seed):
    """The rule before issue 22: the best epoch's naive gain > 0.5 paired-bootstrap SE."""
    sc = [scores(y, p, n_classes)["macro_f1"] for p in proba]
    chosen = int(np.argmax(sc))
    gain = paired_bootstrap(y, proba[0], proba[chosen], n_classes, "macro_f1", seed)
    return chosen > 0 and gain["gain"] > 0.5 * gain["se"] and gain["gain"] > 0


def test_weighted_scores_equal_the_plain_scores_under_unit_weights_and_count_repeats():
    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    proba = np.eye(4)[pred]
    for metric in ("accuracy", "macro_f1"):
        assert weighted_scores(y, pred, np.ones((1, 60)), 4, metric)[0] == pytest.approx(scores(y, proba, 4)[metric])
    w = rng.integers(0, 3, 60)
    idx = np.repeat(np.arange(60), w)  # a resample with repeats is a weight vector of counts
    assert weighted_scores(y, pred, w[None].astype(float), 4, "macro_f1")[0] == pytest.approx(
        scores(y[idx], proba[idx], 4)["macro_f1"])


def test_choosing_among_equal_candidates_is_optimistic_and_the_correction_removes_it():
    """A null: 30 epochs with the probe's true accuracy. The best epoch's gain looks positive (the
    maximum of noise); the bias-corrected gain is about 0. Over 40 cells the old rule keeps most of
    them, the new rule at level 0.1 at most a few."""
    rng = np.random.default_rng(1)
    naive, corrected, old, new = [], [], 0, 0
    for cell in range(40):
        y, proba = noisy_curve(rng, 200, 10, 0.72, 0.0)
        sc = [scores(y, p, 10)["macro_f1"] for p in proba]
        out = bias_corrected(y, proba, 10, "macro_f1", cell, int(np.argmax(sc)), baseline=0, resamples=300)
        naive.append(out["gain_naive"])
        corrected.append(out["gain"])
        old += _old_rule(y, proba, 10, cell)
        new += keep(out["gain"], out["se"], 0.1)
    assert np.mean(naive) > 0.015  # the optimism of the maximum
    assert abs(np.mean(corrected)) < 0.008
    assert old >= 20 and new <= 5


def test_a_real_gain_is_kept_and_a_harmful_change_never():
    rng = np.random.default_rng(2)
    for gain, expected in ((0.15, True), (-0.10, False)):
        y, proba = noisy_curve(rng, 200, 10, 0.7, gain)
        sc = [scores(y, p, 10)["macro_f1"] for p in proba]
        out = bias_corrected(y, proba, 10, "macro_f1", 0, int(np.argmax(sc)), baseline=0)
        assert keep(out["gain"], out["se"], 0.1) is expected
        if expected:
            assert 0.08 < out["gain"] <= out["gain_naive"]


def test_a_change_that_does_nothing_has_gain_zero_and_is_never_kept():
    """Fine-tuning at learning rate 0 reproduces the probe at every epoch: nothing to keep."""
    y, proba = noisy_curve(np.random.default_rng(3), 100, 5, 0.8, 0.0, epochs=0)
    same = np.repeat(proba, 6, axis=0)
    out = bias_corrected(y, same, 5, "accuracy", 0, 3, baseline=0)
    assert out["gain"] == out["gain_naive"] == out["se"] == 0.0 and not keep(out["gain"], out["se"], 0.45)


def test_the_corrected_score_of_a_selection_is_below_the_winners_score_under_a_null():
    rng = np.random.default_rng(4)
    y, proba = noisy_curve(rng, 150, 4, 0.6, 0.0, epochs=17)
    sc = [scores(y, p, 4)["accuracy"] for p in proba]
    out = bias_corrected(y, proba, 4, "accuracy", 0, int(np.argmax(sc)))
    assert out["score"] == pytest.approx(max(sc)) and out["optimism"] > 0.01 and "gain" not in out


def test_keep_threshold_is_the_one_sided_normal_quantile():
    assert keep_threshold(0.1) == pytest.approx(1.2816, abs=1e-4)
    assert keep_threshold(0.05) == pytest.approx(1.6449, abs=1e-4)
    assert keep(0.045, 0.03, 0.1) and not keep(0.045, 0.03, 0.05)  # 1.5 SE
    assert not keep(0.0, 0.0, 0.1) and not keep(-0.01, 0.001, 0.1)


def test_interpolate_mixes_float_weights_and_keeps_the_tuned_integer_buffers():
    start = {"w": torch.zeros(3), "n": torch.tensor(1)}
    tuned = {"w": torch.tensor([2.0, 4.0, 6.0]), "n": torch.tensor(7)}
    assert torch.equal(interpolate(start, tuned, 0.0)["w"], start["w"])
    assert torch.equal(interpolate(start, tuned, 1.0)["w"], tuned["w"])
    half = interpolate(start, tuned, 0.5)
    assert torch.allclose(half["w"], torch.tensor([1.0, 2.0, 3.0])) and half["n"].item() == 7


def test_pick_alpha_always_tries_the_tuned_model_and_breaks_ties_by_loss_then_larger_alpha():
    results = {0.25: (0.8, 0.5), 0.5: (0.9, 0.6), 0.75: (0.9, 0.4), 1.0: (0.7, 0.3)}
    alpha, seen = pick_alpha([0.25, 0.5, 0.75], lambda a: results[a])
    assert alpha == 0.75 and set(seen) == {0.25, 0.5, 0.75, 1.0}
    alpha, _ = pick_alpha([0.5], lambda a: (0.9, 0.4))
    assert alpha == 1.0  # exact tie in score and loss: the larger alpha


def _grid(values, **extra):
    return {f"C={c:g}": {"macro_f1": v, "n_scored": 64, "recipe": {"kind": "linear", "C": c}, **extra}
            for c, v in zip([0.01, 0.1, 1.0, 10.0, 100.0], values)}


def test_the_tie_rule_is_a_grid_search_by_default_and_favours_no_end_of_the_grid():
    table = _grid([0.70, 0.78, 0.80, 0.79, 0.60])
    assert best(table, "macro_f1") == "C=1"
    # within one SE: the C whose neighbours also score well wins, and a mirrored grid mirrors the choice
    assert best(_grid([0.70, 0.79, 0.80, 0.81, 0.60]), "macro_f1", tie_se=1.0) == "C=1"
    assert best(_grid([0.60, 0.81, 0.80, 0.79, 0.70]), "macro_f1", tie_se=1.0) == "C=1"
    assert best(_grid([0.81, 0.80, 0.79, 0.60, 0.55]), "macro_f1", tie_se=1.0) == "C=0.01"
    assert best(_grid([0.55, 0.60, 0.79, 0.80, 0.81]), "macro_f1", tie_se=1.0) == "C=100"
    # log losses no longer matter: the same table with any losses chooses the same C
    lossy = {k: {**v, "log_loss": 3.0 if k == "C=1" else 0.1} for k, v in _grid([0.70, 0.79, 0.80, 0.81, 0.6]).items()}
    assert best(lossy, "macro_f1", tie_se=1.0) == "C=1"


def test_the_text_encoder_decision_keeps_a_constructed_gain_and_not_a_null():
    from pipeline_lib.config import parse_params
    from pipeline_lib.text import finetune as text_finetune

    params = parse_params({})
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(4), 16)
    before = np.eye(4)[np.where(rng.random(64) < 0.6, y, (y + 1) % 4)]  # the frozen encoder: 60 % right
    better = before.copy()
    fixed = np.flatnonzero(before.argmax(1) != y)[:15]
    better[fixed] = np.eye(4)[y[fixed]]                                  # the tuned one: 15 more right, none lost
    kept = text_finetune._decision(params, y, before, better, 4, "cv")
    assert kept["kept"] and kept["gain"] > 0.15 and "level 0.1" in kept["reason"]
    same = text_finetune._decision(params, y, before, before.copy(), 4, "cv")
    assert not same["kept"] and same["gain"] == 0.0
    worse = text_finetune._decision(params, y, better, before, 4, "cv")
    assert not worse["kept"] and worse["gain"] < 0


def test_uncertain_diverse_takes_the_most_uncertain_item_of_each_region():
    from pipeline_lib.advise import margins, uncertain_diverse

    rng = np.random.default_rng(6)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    X = np.concatenate([c + rng.normal(0, 0.1, (20, 3)) for c in centres])  # three tight regions
    confident = np.tile([0.9, 0.05, 0.05], (60, 1))
    proba = confident.copy()
    unsure = {0: [3, 7], 1: [25, 31], 2: [44, 50]}  # two hesitant items per region, the first the most
    for items in unsure.values():
        proba[items[0]] = [0.40, 0.39, 0.21]
        proba[items[1]] = [0.45, 0.35, 0.20]
    chosen = uncertain_diverse(X, proba, 3, seed=0, oversample=2)
    assert sorted(chosen) == [3, 25, 44]  # one per region, its smallest margin: not two from one region
    assert list(chosen) == sorted(chosen, key=lambda i: margins(proba)[i])  # most uncertain first
