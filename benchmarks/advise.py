"""Issue 15's checks of the advise stage, on features the pipeline computes (ingest -> train_head):
Fashion-MNIST (per-seed draws from the full data: k labelled images per class, the rest of a
120-per-class pool unlabelled with its labels hidden, 2,000 test images) and the drug reviews
(condition; k labelled reviews per class, the rest of the training file as the pool, the fixed
test file).

1. Extrapolation: the learning curve fitted on the k labels predicts the score at 2k; measured:
   the same head recipe trained on the k labels plus k more per class from the pool, on test.
2. What to label next, simulated: rounds of `--batch` suggestions given their true labels
   (auto, typical, margin) against as many random ones; test macro-F1 after each round.
3. Labels that look wrong: 5 % and 10 % of the labels flipped to another class; precision and
   recall of the ranking's first N (N = number of flips).

    .venv/bin/python benchmarks/advise.py [--data images|text] [--shots 10] [--seeds 5] [--rounds 5] [--batch 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from _common import full_data_npz

from pipeline_lib import advise
from pipeline_lib.config import parse_params  # noqa: E402
from pipeline_lib.dataset import UNLABELED  # noqa: E402
from pipeline_lib.features import load_features  # noqa: E402
from pipeline_lib.heads import HeadRecipe, predict_proba  # noqa: E402
from pipeline_lib.paths import Paths  # noqa: E402
from pipeline_lib.stages import run_stages  # noqa: E402
from pipeline_lib.stats import macro_f1_from_labels  # noqa: E402
from pipeline_lib.text import drug_reviews  # noqa: E402


def features(data: str, shots: int, seed: int, work: Path) -> dict:
    """The pipeline's own features and chosen head recipe for one draw."""
    raw = {"seed": seed, "data": {"shots_per_class": shots, "min_per_class": 1}, "finetune": {"enabled": False},
           "featurize": {"cache_dir": str(work.parent / "feature-cache")}, "mlflow": {"log_model": False}}
    if data == "images":
        raw["data"].update(path=str(full_data_npz(seed, work.parent)), sample_test_per_class=200)
    else:
        train, test = drug_reviews.load("condition")
        csv = work / "reviews.csv"
        pd.concat([train.assign(split=""), test.assign(split="test")]).to_csv(csv, index=False)
        raw["data"].update(source="manifest", path=str(csv))
        raw["evaluate"] = {"tta": "none"}
    params, paths = parse_params(raw), Paths.for_root(work)
    run_stages(params, paths, last="train_head")
    meta = json.loads(paths.head_meta.read_text())
    name = meta["backbone_spec"]["name"]
    X, y, _ = load_features(paths, "train", name)
    U, u_truth, _ = load_features(paths, UNLABELED, name)
    Xt, yt, _ = load_features(paths, "test", name)
    return {"X": X, "y": y.astype(int), "U": U, "u": u_truth.astype(int), "Xt": Xt, "yt": yt.astype(int),
            "recipe": HeadRecipe(**meta["recipe"]), "params": params, "n_classes": len(meta["classes"])}


def test_f1(d: dict, X: np.ndarray, y: np.ndarray, seed: int) -> float:
    head = advise.head_fitter(d["recipe"], d["params"].train_head, d["n_classes"])(X, y, seed)
    return macro_f1_from_labels(d["yt"], predict_proba(head, d["Xt"]).argmax(1), d["n_classes"])


def extrapolation(d: dict, seed: int) -> dict:
    p = d["params"]
    fit = advise.head_fitter(d["recipe"], p.train_head, d["n_classes"])
    curve = advise.learning_curve(d["X"], d["y"], d["n_classes"], fit, p.advise.fractions, p.advise.repeats,
                                  p.selection.folds, seed, "macro_f1")
    n = len(d["y"])
    out = advise.extrapolate(curve.sizes, curve.scores, [n, 2 * n], seed)
    rng = np.random.default_rng(seed)
    extra = np.concatenate([rng.choice(np.flatnonzero(d["u"] == c), min(int((d["y"] == c).sum()), int((d["u"] == c).sum())),
                                       replace=False) for c in range(d["n_classes"])])
    return {"predicted_now": out["predicted"][0], "measured_now": test_f1(d, d["X"], d["y"], seed),
            "predicted_2x": out["predicted"][1], "low_2x": out["low"][1], "high_2x": out["high"][1],
            "measured_2x": test_f1(d, np.r_[d["X"], d["U"][extra]], np.r_[d["y"], d["u"][extra]], seed)}


def simulate(d: dict, strategy: str, rounds: int, batch: int, seed: int) -> list[float]:
    """Test macro-F1 after each round of ``batch`` labels chosen by ``strategy`` (auto as the stage decides)."""
    p = d["params"]
    X, y, pool = d["X"], d["y"], np.arange(len(d["U"]))
    scores = [test_f1(d, X, y, seed)]
    for r in range(rounds):
        name = strategy
        if strategy == "auto":
            name = "typical" if np.median(np.bincount(y, minlength=d["n_classes"])) < p.advise.typical_below else "margin"
        head = advise.head_fitter(d["recipe"], p.train_head, d["n_classes"])(X, y, seed)
        proba = predict_proba(head, d["U"][pool])
        chosen = pool[advise.suggest(name, X, d["U"][pool], proba, batch, seed * 100 + r)]
        X, y = np.r_[X, d["U"][chosen]], np.r_[y, d["u"][chosen]]
        pool = np.setdiff1d(pool, chosen)
        scores.append(test_f1(d, X, y, seed))
    return scores


def noise(d: dict, rate: float, seed: int) -> dict:
    p, y = d["params"], d["y"].copy()
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), max(1, int(round(rate * len(y)))), replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, d["n_classes"], len(flipped))) % d["n_classes"]
    fit = advise.head_fitter(d["recipe"], p.train_head, d["n_classes"])
    curve = advise.learning_curve(d["X"], y, d["n_classes"], fit, [1.0], p.advise.repeats, p.selection.folds, seed,
                                  "macro_f1")
    ranked = advise.suspect_labels(y, curve.oof)
    top = set(ranked["index"][:len(flipped)].tolist())
    hits = len(top & set(flipped.tolist()))
    return {"precision": hits / len(top), "recall": hits / len(flipped), "flips": len(flipped),
            "flagged": int(ranked["flagged"].sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["images", "text"], default="images")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="advise-bench-") as tmp:
        for seed in range(args.seeds):
            work = Path(tmp) / f"s{seed}"
            work.mkdir()
            d = features(args.data, args.shots, seed, work)
            row = {"seed": seed, **extrapolation(d, seed),
                   **{f"sim_{s}": simulate(d, s, args.rounds, args.batch, seed) for s in ("auto", "typical", "margin", "random")},
                   **{f"noise_{int(r * 100)}": noise(d, r, seed) for r in (0.05, 0.10)}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    r = pd.DataFrame(rows)
    print(f"\n{args.data}, {args.shots} labels per class, {args.seeds} seeds (mean ± std); test macro-F1")
    err = r["predicted_2x"] - r["measured_2x"]
    inside = ((r["low_2x"] <= r["measured_2x"]) & (r["measured_2x"] <= r["high_2x"])).mean()
    print(f"1. at 2x labels: predicted {r['predicted_2x'].mean():.3f}, measured {r['measured_2x'].mean():.3f}, "
          f"error {err.mean():+.3f} ± {err.std():.3f} (|error| {err.abs().mean():.3f}); measured inside the 80 % "
          f"interval in {inside:.0%} of seeds; at 1x predicted {r['predicted_now'].mean():.3f} vs "
          f"measured {r['measured_now'].mean():.3f}")
    gain_p, gain_m = r["predicted_2x"] - r["predicted_now"], r["measured_2x"] - r["measured_now"]
    print(f"   the gain of doubling: predicted {gain_p.mean():+.3f} ± {gain_p.std():.3f}, measured {gain_m.mean():+.3f} ± "
          f"{gain_m.std():.3f} (error {(gain_p - gain_m).mean():+.3f}, |error| {(gain_p - gain_m).abs().mean():.3f})")
    curves = {s: np.array(r[f"sim_{s}"].tolist()) for s in ("auto", "typical", "margin", "random")}
    print(f"2. labelling rounds of {args.batch}: macro-F1 after round 0..{args.rounds} (mean over seeds)")
    for s, c in curves.items():
        gain = (c[:, 1:] - curves["random"][:, 1:])
        print(f"   {s:>8}: " + " ".join(f"{v:.3f}" for v in c.mean(0))
              + ("" if s == "random" else f"   vs random: {gain.mean():+.4f} on average, per round "
                 + " ".join(f"{g:+.3f}" for g in gain.mean(0)) + f"; rounds >= random {np.mean(gain.mean(0) >= 0):.0%}"))
        print(f"   {'':>8}  macro-F1 gained per label (rounds 1..{args.rounds}): "
              f"{(c[:, -1] - c[:, 0]).mean() / (args.rounds * args.batch):.5f}")
    for rate in (5, 10):
        n = pd.DataFrame(r[f"noise_{rate}"].tolist())
        print(f"3. {rate} % labels flipped ({n['flips'].mean():.1f} flips): precision@N {n['precision'].mean():.2f} ± "
              f"{n['precision'].std():.2f}, recall@N {n['recall'].mean():.2f} (random ranking: {rate / 100:.2f}); "
              f"flagged {n['flagged'].mean():.1f}")


if __name__ == "__main__":
    main()
