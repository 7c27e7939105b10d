"""Issue 22's calibration benchmark: are the decisions made on few labels honest?

    .venv/bin/python benchmarks/decisions.py simulate [--cells 400]
    .venv/bin/python benchmarks/decisions.py images --shots 5 10 20 --seeds 3 [--variants real lr0 shuffled lr30]
    .venv/bin/python benchmarks/decisions.py texts --task condition --shots 8 16 --seeds 5 [--set KEY=VALUE ...]
    .venv/bin/python benchmarks/decisions.py promotion [--runs 20]

simulate: out-of-fold predictions built so that the truth is known (tests.helpers.noisy_curve: a
probe and a 30-epoch curve whose true gain is given, neighbouring epochs agreeing on most items),
n = 200 items, 10 classes. For each true gain, the share of cells each rule keeps and the mean
optimism (estimated minus true gain) of the naive best-epoch gain and of the bias-corrected one.
The old rule: the best epoch's gain > 0.5 SE. The new rule: the BBC-CV gain > z(keep_level) SE.

images: real cells through the pipeline's own stages (default params, full Fashion-MNIST draws of
k labelled images per class, 2,000 test images). Each cell is refitted whatever the rule says
(``pipeline_lib.image.finetune.keep`` forced), so its test gain is known; the report's gains give both rules'
decisions. Variants: ``real`` (default fine-tuning), and null controls whose answer is known:
``lr0`` (learning rate 0: it is the probe), ``shuffled`` (fine-tuned on permuted labels: harmful),
``lr30`` (backbone learning rate x30: harmful). One JSON line per cell, then per variant and k:
mean optimism (old, new), kept-but-worse-by-2-points and not-kept-but-better-by-2-points shares,
and the deployed model's test accuracy under each rule.

texts: the same for the drug reviews (condition or sentiment; the package's 600 training reviews
as the pool, its test reviews as test): the contrastive tuning of the encoder refitted whatever
the rule says; no candidates are chosen among, so the naive and corrected gains are one.

promotion: one data set (a full-data draw: a pool of 120 images per class, 2,000 test images) and
the default params, 20 seeds (which k images of the pool are labelled, the folds, the head),
registered in turn as repeated `dvc exp run -S seed=...` would: how often each rule promotes a
challenger that is, by construction, no better in expectation (the old rule: test accuracy >= the champion's; the new one:
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

from pipeline_lib.config import load_params, parse_params
from pipeline_lib.paths import Paths
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
    """Image fine-tuning with every training frame's labels permuted (a null control harness)."""
    from pipeline_lib.image import finetune

    original = finetune._prepare

    def prepare(params, paths, real, synthetic, device, head=None):
        rng = np.random.default_rng([seed, len(real)])
        real = real.assign(label_idx=rng.permutation(real["label_idx"].to_numpy()))
        return original(params, paths, real, synthetic, device, head)

    monkeypatch_target.setattr(finetune, "_prepare", prepare)


def levels(rows: list[dict], candidates: list[float]) -> None:
    """What each keep_level would have decided on the same cells: kept shares, harm, missed gains,
    deployed accuracy, per group of cells (real images, texts, null controls)."""
    groups = defaultdict(list)
    for r in rows:
        kind = "nulls" if r["variant"] in ("lr0", "shuffled", "lr30") else ("texts" if r["variant"].startswith("text")
                                                                            else "images")
        groups[kind].append(r)
    print(f"\n{'level':>5} {'group':>7} {'cells':>5} {'kept':>5} {'kept&worse>2':>12} {'missed>2':>8} {'accuracy':>8}")
    for level in candidates:
        for kind, rs in sorted(groups.items()):
            kept = [r["best_epoch"] > 0 and keep(r["gain"], r["se"], level) for r in rs]
            acc = [r.get("accuracy_finetune" if k else "accuracy_head",
                         r["accuracy_new"] if k == r["kept_new"] else r["accuracy_old"] if k == r["kept_old"] else np.nan)
                   for r, k in zip(rs, kept)]
            print(f"{level:>5} {kind:>7} {len(rs):>5} {np.mean(kept):>5.0%} "
                  f"{np.mean([k and r['test_gain'] < -0.02 for r, k in zip(rs, kept)]):>12.0%} "
                  f"{np.mean([not k and r['test_gain'] > 0.02 for r, k in zip(rs, kept)]):>8.0%} "
                  f"{np.nanmean(acc) * 100:>8.2f}")


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
        from pipeline_lib.image import finetune

        mp.setattr(finetune, "keep", lambda *a: True)  # refit whatever the rule says: the test gain is known
        if variant == "shuffled":
            _shuffling(mp, seed)
        for stage in STAGES[:STAGES.index("evaluate") + 1]:
            stage_module(stage).run(params, paths)
    ft = json.loads(paths.finetune_report.read_text())
    metrics = json.loads(paths.metrics.read_text())
    models, suffix = metrics["models"], "_tta" if metrics["selection"]["tta"] else ""
    if "finetune" not in models:  # no epoch beat the probe: the refit would be the probe itself
        models.update(finetune=models["head"], finetune_tta=models.get("head_tta"))
    metric = params.selection.metric
    test_gain = models["finetune"][f"test_{metric}"] - models["head"][f"test_{metric}"]
    kept_old = old_rule(ft["gain_naive"], ft["gain_se"], ft["best_epoch"])
    kept_new = ft["best_epoch"] > 0 and keep(ft["gain"], ft["gain_se"], level)
    acc = {k: models[k + suffix]["test_accuracy"] for k in ("head", "finetune")}
    return {"variant": variant, "shots": shots, "seed": seed, "best_epoch": ft["best_epoch"],
            "wise_alpha": ft["wise_alpha"], "gain_naive": ft["gain_naive"], "gain": ft["gain"], "se": ft["gain_se"],
            "test_gain": test_gain, "kept_old": kept_old, "kept_new": bool(kept_new),
            "accuracy_old": acc["finetune" if kept_old else "head"], "accuracy_new": acc["finetune" if kept_new else "head"],
            "accuracy_head": acc["head"], "accuracy_finetune": acc["finetune"],
            "n_test": metrics["n_test"], "seconds": round(time.perf_counter() - started, 1)}


def text_cell(root, task: str, shots: int, seed: int, level: float, overrides: list[str]) -> dict:
    """One drug-reviews cell (pipeline_lib.text.drug_reviews: the package's train reviews as the pool,
    its test reviews as test): the contrastive tuning refitted whatever the rule says."""
    import pandas as pd
    import pytest
    from _common import apply_overrides

    from pipeline_lib.stages import STAGES, stage_module
    from pipeline_lib.text import drug_reviews
    from pipeline_lib.text import finetune as text_finetune

    train, test = drug_reviews.load(task)
    csv = root / f"reviews_{task}.csv"
    pd.concat([train.assign(split=""), test.assign(split="test")]).to_csv(csv, index=False)
    raw = {"seed": seed, "data": {"source": "manifest", "path": str(csv), "shots_per_class": shots, "min_per_class": 1},
           "mlflow": {"log_model": False}, "advise": {"enabled": False}}
    params = parse_params(apply_overrides(parse_params(raw).model_dump(), overrides))
    paths = Paths.for_root(root)
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(io.StringIO()):
        mp.setattr(text_finetune, "keep", lambda *a: True)
        for stage in STAGES[:STAGES.index("evaluate") + 1]:
            stage_module(stage).run(params, paths)
    ft = json.loads(paths.finetune_report.read_text())
    models = json.loads(paths.metrics.read_text())["models"]
    metric = params.selection.metric
    kept_old = bool(ft["gain"] > 0 and ft["gain"] > 0.5 * ft["gain_se"])
    kept_new = keep(ft["gain"], ft["gain_se"], level)
    return {"variant": f"text-{task}", "shots": shots, "seed": seed, "best_epoch": 1, "wise_alpha": 1.0,
            "gain_naive": ft["gain"], "gain": ft["gain"], "se": ft["gain_se"],
            "test_gain": models["finetune"][f"test_{metric}"] - models["head"][f"test_{metric}"],
            "kept_old": kept_old, "kept_new": kept_new,
            "accuracy_old": models["finetune" if kept_old else "head"]["test_accuracy"],
            "accuracy_new": models["finetune" if kept_new else "head"]["test_accuracy"],
            "accuracy_head": models["head"]["test_accuracy"], "accuracy_finetune": models["finetune"]["test_accuracy"],
            "n_test": int(len(test)), "seconds": round(time.perf_counter() - started, 1)}


def texts(args) -> None:
    root = copy_project()
    level = load_params(root).selection.keep_level
    rows = [record(text_cell(root, args.task, shots, seed, level, args.set), args.out)
            for shots in args.shots for seed in range(args.first_seed, args.first_seed + args.seeds)]
    summarise(rows)


def record(row: dict, out: str | None) -> dict:
    """Print a cell's JSON line (and append it to ``out``)."""
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def summarise(rows: list[dict]) -> None:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["variant"], r["shots"])].append(r)
        groups[("nulls" if r["variant"] in ("lr0", "shuffled", "lr30") else "all real", 0)].append(r)
    print("\noptimism: estimated minus test gain, over the cells where an epoch beat the probe (else nothing is refitted)")
    print(f"{'variant':>8} {'k':>3} {'cells':>5}  {'optimism old':>12} {'new':>7}  {'kept&worse>2 old':>16} {'new':>5}"
          f"  {'not kept&better>2 old':>21} {'new':>5}  {'accuracy old':>12} {'new':>6}")
    for (variant, shots), rs in sorted(groups.items()):
        def share(rule, cond):
            return np.mean([r[rule] and cond(r) for r in rs])

        def missed(rule):
            return np.mean([not r[rule] and r["test_gain"] > 0.02 for r in rs])

        def worse(r):
            return r["test_gain"] < -0.02

        tried = [r for r in rs if r["best_epoch"] > 0] or [{"gain_naive": np.nan, "gain": np.nan, "test_gain": 0}]
        print(f"{variant:>8} {shots:>3} {len(rs):>5}  {np.mean([r['gain_naive'] - r['test_gain'] for r in tried]):>+12.4f} "
              f"{np.mean([r['gain'] - r['test_gain'] for r in tried]):>+7.4f}  "
              f"{share('kept_old', worse):>16.0%} {share('kept_new', worse):>5.0%}"
              f"  {missed('kept_old'):>21.0%} {missed('kept_new'):>5.0%}  "
              f"{np.mean([r['accuracy_old'] for r in rs]) * 100:>12.2f} {np.mean([r['accuracy_new'] for r in rs]) * 100:>6.2f}")


def images(args) -> None:
    from _common import apply_overrides

    root = copy_project()
    base = apply_overrides(load_params(root).model_dump(), args.set)
    level = base["selection"]["keep_level"]
    rows = [record(image_cell(root, base, variant, shots, seed, level), args.out) for variant in args.variants
            for shots in args.shots for seed in range(args.first_seed, args.first_seed + args.seeds)]
    summarise(rows)


def promotion(args) -> None:
    from pipeline_lib.features import load_features
    from pipeline_lib.heads import load_head, predict_proba
    from pipeline_lib.registry import decide
    from pipeline_lib.stages import featurize, ingest, train_head

    root = copy_project()
    paths = Paths.for_root(root)
    data = benchmark_params(load_params(root).model_dump(), 0, args.shots, "full", root)["data"]  # one draw
    correct, test_ids = [], None
    for seed in range(args.runs):  # the seed picks the k labelled images of the pool and seeds the head
        raw = {**benchmark_params(load_params(root).model_dump(), seed, args.shots, "full", root), "data": data}
        params = parse_params(raw)
        with contextlib.redirect_stderr(io.StringIO()):
            for stage in (ingest, featurize, train_head):
                stage.run(params, paths)
        Xt, yt, ids = load_features(paths, "test")
        assert test_ids is None or np.array_equal(ids, test_ids), "the test split must not change between runs"
        test_ids = ids
        head, _ = load_head(paths.head, paths.head_meta)
        correct.append(predict_proba(head, Xt).argmax(1) == yt)
    level = params.mlflow.promotion_level
    champion, promoted = {"old": 0, "new": 0}, {"old": 0, "new": 0}
    for i in range(1, len(correct)):
        if correct[i].mean() >= correct[champion["old"]].mean():  # before issue 22: margin 0, ties promoted
            promoted["old"] += 1
            champion["old"] = i
        if decide(correct[i], correct[champion["new"]], level)[0]:
            promoted["new"] += 1
            champion["new"] = i
    accs = [c.mean() for c in correct]
    print(f"{args.runs} runs on one data set (k={args.shots} of a pool of 120 per class, the same {len(test_ids)} test "
          f"images), default params, seeds 0..{args.runs - 1}: test accuracy {np.mean(accs) * 100:.1f} ± "
          f"{np.std(accs) * 100:.1f} (min {min(accs) * 100:.1f}, max {max(accs) * 100:.1f})")
    print(f"promotions among {args.runs - 1} challengers registered in turn (none truly better: same data, same "
          f"recipe): old rule (accuracy >= champion's) {promoted['old']}, new rule (McNemar one-sided at {level}) "
          f"{promoted['new']}")


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
    img.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params overrides for every cell")
    txt = sub.add_parser("texts")
    txt.add_argument("--task", choices=["condition", "sentiment"], default="condition")
    txt.add_argument("--shots", type=int, nargs="+", default=[8, 16])
    txt.add_argument("--seeds", type=int, default=5)
    txt.add_argument("--first-seed", type=int, default=0)
    txt.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    txt.add_argument("--out", default=None)
    summary = sub.add_parser("summary", help="the tables of cells written with --out")
    summary.add_argument("jsonl")
    summary.add_argument("--levels", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.25, 0.3, 0.5])
    pro = sub.add_parser("promotion")
    pro.add_argument("--runs", type=int, default=20)
    pro.add_argument("--shots", type=int, default=20)
    args = parser.parse_args()
    level = parse_params({}).selection.keep_level
    if args.what == "simulate":
        simulate(args.cells, level)
    elif args.what == "images":
        images(args)
    elif args.what == "texts":
        texts(args)
    elif args.what == "summary":
        rows = [json.loads(line) for line in open(args.jsonl) if line.strip()]
        summarise(rows)
        levels(rows, args.levels)
    else:
        promotion(args)


if __name__ == "__main__":
    assert ROOT.exists()
    main()
