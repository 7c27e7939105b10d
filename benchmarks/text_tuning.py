"""The contrastive tuning alone, variant against variant on the same draws: the drug reviews, k
labelled reviews per class drawn per seed from the package's training file, the fixed test file;
the encoder tuned by pipeline_lib.text.finetune.tune with each variant's finetune.text settings,
then scikit-learn's LogisticRegressionCV (C by 5-fold CV on macro-F1) on the tuned vectors; test
macro-F1 and the tuning's seconds. "frozen" is the untuned encoder with the same head.

    .venv/bin/python benchmarks/text_tuning.py --task condition --shots 8 --seeds 3 \
        --variants default: sampled5:pairs=sampled,pairs_per_example=5,epochs=1,lr=0.00002,batch_size=16

A variant is NAME:KEY=VALUE,... over finetune.text's defaults (params.yaml). Run it alone: it is
CPU-bound.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import yaml
from _common import ROOT
from text_selection import lr_cv, macro_f1

from pipeline_lib.config import TextFinetuneParams  # noqa: E402
from pipeline_lib.text import drug_reviews  # noqa: E402
from pipeline_lib.text.encoder import encode, load_sentence_model, resolve_encoder  # noqa: E402
from pipeline_lib.text.finetune import tune  # noqa: E402


def variant(spec: str) -> tuple[str, TextFinetuneParams]:
    name, _, items = spec.partition(":")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())["finetune"]["text"]
    for item in filter(None, items.split(",")):
        key, _, value = item.partition("=")
        base[key] = yaml.safe_load(value)
    return name, TextFinetuneParams(**base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["condition", "sentiment"], default="condition")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["default:"])
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    variants = [variant(v) for v in args.variants]
    folder = resolve_encoder("all-MiniLM-L6-v2")
    train, test = drug_reviews.load(args.task)
    classes = sorted(train["label"].unique())
    y_pool = train["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    y_test = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    frozen = load_sentence_model(folder, args.max_length)
    test_frozen = encode(frozen, test["text"].tolist())
    results: dict[str, list] = {"frozen": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.choice(np.flatnonzero(y_pool == c), args.shots, replace=False)
                              for c in range(len(classes))])
        texts, y = train["text"].iloc[idx].tolist(), y_pool[idx]
        row = {"seed": seed, "frozen": macro_f1(y_test, lr_cv(encode(frozen, texts), y, test_frozen))}
        results["frozen"].append((row["frozen"], 0.0))
        for name, settings in variants:
            started = time.perf_counter()
            model = tune(folder, args.max_length, texts, y, settings, seed, desc=name)
            seconds = time.perf_counter() - started
            score = macro_f1(y_test, lr_cv(encode(model, texts), y, encode(model, test["text"].tolist())))
            row[name], row[f"{name}_s"] = score, round(seconds, 1)
            results.setdefault(name, []).append((score, seconds))
        print(json.dumps(row), flush=True)
    print(f"\ndrug reviews ({args.task}), k = {args.shots}, {args.seeds} seeds: test macro-F1 (mean ± std), tuning seconds")
    for name, values in results.items():
        scores, seconds = np.array(values).T
        print(f"  {name:<12} {scores.mean():.3f} ± {scores.std():.3f}   {seconds.mean():6.1f} s")


if __name__ == "__main__":
    main()
