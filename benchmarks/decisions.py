"""Issue 22's calibration benchmark: are the decisions made on few labels honest?

    .venv/bin/python benchmarks/decisions.py simulate [--cells 400]
    .venv/bin/python benchmarks/decisions.py images --shots 5 10 20 --seeds 3 [--variants real lr0 shuffled lr30]
    .venv/bin/python benchmarks/decisions.py promotion [--runs 20]

simulate: out-of-fold predictions built so that the truth is known (tests.helpers.noisy_curve: a
probe and a 30-epoch curve whose true gain is given, neighbouring epochs agreeing on most items),
n = 200 items, 10 classes. For each true gain, the share of cells each rule keeps and the mean
optimism (estimated minus true gain) of the naive best-epoch gain and of the bias-corrected one.
The old rule: the best epoch's gain > 0.5 SE. The new rule: the BBC-CV gain > z(keep_level) SE.

images: real cells through the pipeline's own stages (default params, full Fashion-MNIST draws of
k labelled images per class, 2,000 test images). Each cell is refitted whatever the rule says
(``finetune.keep`` forced), so its test gain is known; the report's gains give both rules'
decisions. Variants: ``real`` (default fine-tuning), and null controls whose answer is known:
``lr0`` (learning rate 0: it is the probe), ``shuffled`` (fine-tuned on permuted labels: harmful),
``lr30`` (backbone learning rate x30: harmful). One JSON line per cell, then per variant and k:
mean optimism (old, new), kept-but-worse-by-2-points and not-kept-but-better-by-2-points shares,
and the deployed model's test accuracy under each rule.

promotion: the same data and params, 20 seeds of the head (train_head's folds and initialisation),
registered in turn as repeated `dvc exp run`s would: how often each rule promotes a challenger
that is, by construction, no better (the old rule: test accuracy >= the champion's; the new one:
McNemar's one-sided exact test at mlflow.promotion_level on the same test items).

Run it alone: it is CPU-bound.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from collections import defaultdict

import numpy as np
from _common import ROOT, benchmark_params, copy_project

from pipeline_lib.config import Paths, load_params, parse_params
from pipeline_lib.selection import bias_corrected, keep, paired_bootstrap, scores
from tests.helpers import noisy_curve

VARIANTS = {"real": {}, "lr0": {"finetune": {"lr": 0.0}}, "shuffled": {},
            "lr30": {"finetune": {"backbone_lr_mult": 9.0}}}  # default 0.3 x 30


def old_rule(gain_naive: float, se: float, best_epoch: int) -> bool:
    return bool(best_epoch > 0 and gain_naive > 0 and gain_naive > 0.5 * se)


def simulate(cells: int, level: float) -> None:
    print(f"simulated cells: n=200 items, 10 classes, probe accuracy 0.72, 30 epochs; {cells} cells per true gain")
    print(f"{'true gain':>9}  {'kept old':>8}  {'kept new':>8}  {'optimism naive':>14}  {'optimism corrected':>18}")
    rng = np.random.default_rng(0)
    for true_gain in (-0.05, -0.02, 0.0, 0.02, 0.05, 0.10):
        old = new = 0
        naive, corrected = [], []
        for cell in range(cells):
            y, proba = noisy_curve(rng, 200, 10, 0.72, true_gain)
            sc = [scores(y, p, 10)["macro_f1"] for p in proba]
            chosen = int(np.argmax(sc))
            gain = paired_bootstrap(y, proba[0], proba[chosen], 10, "macro_f1", cell)
            old += old_rule(gain["gain"], gain["se"], chosen)
            out = bias_corrected(y, proba, 10, "macro_f1", cell, chosen, baseline=0, resamples=500)
            new += keep(out["gain"], out["se"], level)
            naive.append(out["gain_naive"] - true_gain)
            corrected.append(out["gain"] - true_gain)
        print(f"{true_gain:>+9.2f}  {old / cells:>8.1%}  {new / cells:>8.1%}  {np.mean(naive):>+14.4f}  "
              f"{np.mean(corrected):>+18.4f}", flush=True)


def _shuffling(monkeypatch_target, seed: int):
    """The finetune stage with every training frame's labels permuted (a null control harness)."""
    from pipeline_lib.stages import finetune

    original = finetune._prepare

    def prepare(params, paths, real, synthetic, device, head=None):
        rng = np.random.default_rng([seed, len(real)])
        real = real.assign(label_idx=rng.permutation(real["label_idx"].to_numpy()))
        return original(params, paths, real, synthetic, device, head)

    monkeypatch_target.setattr(finetune, "_prepare", prepare)


def image_cell(root, base: dict, variant: str, shots: int, seed: int, level: float) -> dict:
    import pytest

    from pipeline_lib.stages import STAGES, stage_module

    paths = Paths.for_root(root)
    raw = benchmark_params(base, seed, shots, "full", root)
    for section, values in VARIANTS[variant].items():
        raw[section] = {**raw[section], **values}
    raw["mlflow"] = {**raw["mlflow"], "log_model": False}
    raw["advise"] = {**raw["advise"], "enabled": False}
    params = parse_params(raw)
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(io.StringIO()):
        from pipeline_lib.stages import finetune

        mp.setattr(finetune, "keep", lambda *a: True)  # refit whatever the rule says: the test gain is known
        if variant == "shuffled":
            _shuffling(mp, seed)
        for stage in STAGES[:STAGES.index("evaluate") + 1]:
            stage_module(stage).run(params, paths)
    ft = json.loads(paths.finetune_report.read_text())
    metrics = json.loads(paths.metrics.read_text())
    models, suffix = metrics["models"], "_tta" if metrics["selection"]["tta"] else ""
    metric = params.selection.metric
    test_gain = models["finetune"][f"test_{metric}"] - models["head"][f"test_{metric}"]
    kept_old = old_rule(ft["gain_naive"], ft["gain_se"], ft["best_epoch"])
    kept_new = ft["best_epoch"] > 0 and keep(ft["gain"], ft["gain_se"], level)
    acc = {k: models[k + suffix]["test_accuracy"] for k in ("head", "finetune")}
    return {"variant": variant, "shots": shots, "seed": seed, "best_epoch": ft["best_epoch"],
            "wise_alpha": ft["wise_alpha"], "gain_naive": ft["gain_naive"], "gain": ft["gain"], "se": ft["gain_se"],
            "test_gain": test_gain, "kept_old": kept_old, "kept_new": bool(kept_new),
            "accuracy_old": acc["finetune" if kept_old else "head"], "accuracy_new": acc["finetune" if kept_new else "head"],
            "n_test": metrics["n_test"], "seconds": round(time.perf_counter() - started, 1)}


def summarise(rows: list[dict]) -> None:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["variant"], r["shots"])].append(r)
    print(f"\n{'variant':>8} {'k':>3} {'cells':>5}  {'optimism old':>12} {'new':>7}  {'kept&worse>2 old':>16} {'new':>5}"
          f"  {'not kept&better>2 old':>21} {'new':>5}  {'accuracy old':>12} {'new':>6}")
    for (variant, shots), rs in sorted(groups.items()):
        def share(rule, cond):
            return np.mean([r[rule] and cond(r) for r in rs])

        def missed(rule):
            return np.mean([not r[rule] and r["test_gain"] > 0.02 for r in rs])

        def worse(r):
            return r["test_gain"] < -0.02

        print(f"{variant:>8} {shots:>3} {len(rs):>5}  {np.mean([r['gain_naive'] - r['test_gain'] for r in rs]):>+12.4f} "
              f"{np.mean([r['gain'] - r['test_gain'] for r in rs]):>+7.4f}  "
              f"{share('kept_old', worse):>16.0%} {share('kept_new', worse):>5.0%}"
              f"  {missed('kept_old'):>21.0%} {missed('kept_new'):>5.0%}  "
              f"{np.mean([r['accuracy_old'] for r in rs]) * 100:>12.2f} {np.mean([r['accuracy_new'] for r in rs]) * 100:>6.2f}")


def images(args) -> None:
    root = copy_project()
    base = load_params(root).model_dump()
    level = base["selection"]["keep_level"]
    rows = []
    for variant in args.variants:
        for shots in args.shots:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                row = image_cell(root, base, variant, shots, seed, level)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    summarise(rows)


def promotion(args) -> None:
    from pipeline_lib.features import load_features
    from pipeline_lib.heads import load_head, predict_proba
    from pipeline_lib.stages import featurize, ingest, train_head
    from pipeline_lib.stats import mcnemar_one_sided

    root = copy_project()
    paths = Paths.for_root(root)
    raw = benchmark_params(load_params(root).model_dump(), 0, args.shots, "full", root)
    level = raw["mlflow"]["promotion_level"]
    with contextlib.redirect_stderr(io.StringIO()):
        ingest.run(parse_params(raw), paths)  # one data set, one split, for every run
        featurize.run(parse_params(raw), paths)
    Xt, yt, _ = load_features(paths, "test")
    correct = []
    for seed in range(args.runs):
        with contextlib.redirect_stderr(io.StringIO()):
            train_head.run(parse_params({**raw, "seed": 1000 + seed}), paths)  # only the head's seed differs
        head, _ = load_head(paths.head, paths.head_meta)
        correct.append(predict_proba(head, Xt).argmax(1) == yt)
    champion = {"old": 0, "new": 0}
    promoted = {"old": 0, "new": 0}
    for i in range(1, len(correct)):
        if correct[i].mean() >= correct[champion["old"]].mean():
            promoted["old"] += 1
            champion["old"] = i
        test = mcnemar_one_sided(correct[champion["new"]], correct[i])
        if test["only_second_correct"] > test["only_first_correct"] and test["p_value"] < level:
            promoted["new"] += 1
            champion["new"] = i
    accs = [c.mean() for c in correct]
    print(f"{args.runs} runs of the same data and params (k={args.shots}, {len(yt)} test images), head seeds only: "
          f"test accuracy {np.mean(accs) * 100:.1f} ± {np.std(accs) * 100:.1f} (min {min(accs) * 100:.1f}, max "
          f"{max(accs) * 100:.1f}); {len(set(map(lambda c: c.tobytes(), correct)))} distinct models")
    print(f"false promotions among {args.runs - 1} challengers: old rule (accuracy >= champion's) {promoted['old']}, "
          f"new rule (McNemar one-sided at {level}) {promoted['new']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sim = sub.add_parser("simulate")
    sim.add_argument("--cells", type=int, default=400)
    img = sub.add_parser("images")
    img.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20, 50])
    img.add_argument("--seeds", type=int, default=5)
    img.add_argument("--first-seed", type=int, default=0)
    img.add_argument("--variants", nargs="+", default=["real", "lr0", "shuffled", "lr30"], choices=list(VARIANTS))
    img.add_argument("--out", default=None, help="append each cell's JSON line here too")
    pro = sub.add_parser("promotion")
    pro.add_argument("--runs", type=int, default=20)
    pro.add_argument("--shots", type=int, default=20)
    args = parser.parse_args()
    level = parse_params({}).selection.keep_level
    if args.what == "simulate":
        simulate(args.cells, level)
    elif args.what == "images":
        images(args)
    else:
        promotion(args)


if __name__ == "__main__":
    assert ROOT.exists()
    main()
