"""Contrastive (SetFit-style) fine-tuning of a sentence encoder on a few labelled texts.

Pairs of labelled texts are pulled together (same class, target cosine similarity 1) or pushed
apart (different classes, target 0) with SetFit's loss, the squared error of the cosine
similarity (CosineSimilarityLoss). ``finetune.text.pairs`` says which pairs:

- ``in_batch`` (default): each step encodes a batch of texts once (every class dealt evenly into
  the batches) and scores every pair among them, positives and negatives weighted equally. A
  batch of 16 texts gives 120 pairs for 16 forward passes; SetFit's sampled pairs give 8.
- ``sampled``: SetFit's body training, ``pairs_per_example`` partners per text drawn at random,
  two texts encoded per pair, sentence-transformers' own trainer (``SentenceTransformerTrainer``).

On the drug reviews in_batch reaches sampled pairs' test macro-F1 in a fraction of the steps
(docs/benchmarks.md, "Text tuning in a batch"). The head is then fitted on the tuned vectors
(LP-FT: the encoder first, the head on its output).

The stage (pipeline_lib.stages.finetune) decides on every label whether the tuned encoder beats the
frozen one: each CV fold tunes its own encoder on its training texts only.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .. import atomic
from ..dataset import SYNTHETIC, load_synthetic
from ..errors import PipelineError
from ..features import load_features
from ..heads import fit_head, predict_proba, save_head
from ..selection import keep, keep_threshold, paired_bootstrap, scores, stratified_folds
from .augmentation import augment_text
from .encoder import encode, load_sentence_model, resolve_encoder, texts_of


def contrastive_pairs(y: np.ndarray, per_example: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, second, target) index pairs: for every text, ``per_example`` partners of its own
    class (target 1; none for a class of one text) and as many of other classes (target 0), drawn
    uniformly with a generator seeded by ``seed``."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    first, second, target = [], [], []
    for i, c in enumerate(y):
        same = members[c][members[c] != i]
        other = np.flatnonzero(y != c)
        if len(same):
            first += [i] * per_example
            second += list(rng.choice(same, per_example))
            target += [1.0] * per_example
        if len(other):
            first += [i] * per_example
            second += list(rng.choice(other, per_example))
            target += [0.0] * per_example
    order = rng.permutation(len(first))
    return (np.asarray(first, int)[order], np.asarray(second, int)[order], np.asarray(target, np.float32)[order])


def in_batch_plan(y: np.ndarray, batch_size: int, epochs: int, seed: int) -> list[np.ndarray]:
    """The in_batch steps: per epoch, each class's texts shuffled and dealt round-robin (so each
    batch holds every class it can), cut into batches of ``batch_size``; a last batch of one text
    (no pair) joins the one before. Seeded by ``seed``."""
    y = np.asarray(y)
    rng = np.random.default_rng([seed, 25])
    plan = []
    for _ in range(epochs):
        members = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
        dealt = np.asarray([m[k] for k in range(max(map(len, members), default=0)) for m in members if k < len(m)], int)
        batches = [dealt[i:i + batch_size] for i in range(0, len(dealt), batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches[-2:] = [np.concatenate(batches[-2:])]
        plan += [b for b in batches if len(b) >= 2]
    return plan


def in_batch_loss(embeddings: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair of a batch: (cos - 1)^2 for pairs of one
    class, cos^2 for pairs of two, each kind averaged and the two kinds weighted equally (a batch
    of 8 classes has 7x more negative pairs than positive ones)."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    first, second = torch.triu_indices(len(y), len(y), 1, device=e.device)
    cos = (e[first] * e[second]).sum(-1)
    same = y[first] == y[second]
    parts = [((cos[same] - 1) ** 2).mean()] if same.any() else []
    parts += [(cos[~same] ** 2).mean()] if (~same).any() else []
    return sum(parts) / len(parts)


def pairs_seen(y: np.ndarray, settings, seed: int) -> int:
    """How many pairs one tuning on labels ``y`` scores (the report's figure)."""
    if settings.pairs == "sampled":
        return int(len(contrastive_pairs(y, settings.pairs_per_example, seed)[0])) * settings.epochs
    return _pairs_in(in_batch_plan(y, settings.batch_size, settings.epochs, seed))


def _pairs_in(plan: list[np.ndarray]) -> int:
    return int(sum(len(b) * (len(b) - 1) // 2 for b in plan))


def tune(folder: Path, max_length: int | None, texts: Sequence[str], y: np.ndarray, settings, seed: int,
         device: str = "cpu", noise: Callable[[str, int], str] | None = None, desc: str = "contrastive",
         precision: str = "auto"):
    """A copy of the encoder in ``folder`` tuned on pairs of ``texts`` (``settings.pairs``: in_batch
    or sampled), AdamW at ``settings.lr`` with 10 % linear warm-up and linear decay.
    ``noise(text, key)``, when given, perturbs texts online (seeded by ``key``): the text-noise
    augmentation. Returns the SentenceTransformer, in eval mode."""
    model = load_sentence_model(folder, max_length, device)
    tuner = _tune_sampled if settings.pairs == "sampled" else _tune_in_batch
    tuner(model, list(texts), np.asarray(y), settings, seed, device, noise, desc, precision)
    model.eval()
    return model


def _tune_in_batch(model, texts: list[str], y: np.ndarray, settings, seed: int, device, noise, desc: str,
                   precision: str) -> None:
    from tqdm import tqdm

    from ..runtime import autocast, grad_scaler, optimizer_step

    plan = in_batch_plan(y, settings.batch_size, settings.epochs, seed)
    print(f"{desc}: {len(texts)} texts, {_pairs_in(plan)} pairs in batches, {len(plan)} steps", flush=True)
    if not plan:
        return
    torch.manual_seed(seed)  # dropout
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    warm = max(1, int(0.1 * len(plan)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warm if step < warm else max(0.0, (len(plan) - step) / max(1, len(plan) - warm)))
    scaler = grad_scaler(device, precision)
    labels = torch.as_tensor(y, device=device)
    for step, batch in enumerate(tqdm(plan, desc=desc, unit="step")):
        batch_texts = [noise(texts[i], step * len(texts) + int(i)) if noise is not None else texts[i] for i in batch]
        tokens = model.preprocess(batch_texts) if hasattr(model, "preprocess") else model.tokenize(batch_texts)  # < 6
        features = {k: v.to(device) if torch.is_tensor(v) else v for k, v in tokens.items()}
        with autocast(device, precision):
            loss = in_batch_loss(model(features)["sentence_embedding"], labels[torch.as_tensor(batch, device=device)])
        optimizer_step(loss, optimizer, scaler, model.parameters(), clip=1.0)  # clipped as the Hugging Face trainer does
        scheduler.step()


def _tune_sampled(model, texts: list[str], y: np.ndarray, settings, seed: int, device, noise, desc: str,
                  precision: str) -> None:
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    try:
        from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss
    except ImportError:  # sentence-transformers 5
        from sentence_transformers.losses import CosineSimilarityLoss

    datasets.disable_progress_bars()
    a, b, target = contrastive_pairs(y, settings.pairs_per_example, seed)
    second = [noise(texts[j], k) if noise is not None else texts[j] for k, j in enumerate(b)]
    pairs = datasets.Dataset.from_dict({"sentence1": [texts[i] for i in a], "sentence2": second, "label": target})
    steps = -(-len(pairs) // settings.batch_size) * settings.epochs
    print(f"{desc}: {len(texts)} texts, {len(pairs)} pairs, {steps} steps", flush=True)
    with tempfile.TemporaryDirectory(prefix="text-finetune-") as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.lr, warmup_steps=int(0.1 * steps), weight_decay=0.0, seed=seed, data_seed=seed,
            save_strategy="no", logging_strategy="no", report_to="none", use_cpu=str(device) == "cpu",
            dataloader_num_workers=0, disable_tqdm=False, **_mixed_precision(device, precision))
        SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=CosineSimilarityLoss(model)).train()


def _mixed_precision(device, precision: str) -> dict:
    """The Hugging Face trainer's flags for runtime.precision (mixed precision on CUDA only: its CPU
    path is fp32 or a bf16 that is not autocast)."""
    from ..runtime import resolve_precision

    if str(device) == "cpu":
        return {}
    resolved = resolve_precision(device, precision)
    return {"bf16": resolved == "bf16", "fp16": resolved == "fp16"}


# ---- the stage's phases (pipeline_lib.stages.finetune calls run for a text data set) ------------

def run(params, paths, train: pd.DataFrame, val: pd.DataFrame, n_classes: int, device, checkpoint) -> dict:
    """Decide whether the tuned encoder beats the frozen one — on the val split when there is one,
    else by k-fold CV on every labelled text (selection.finetune_folds; each fold tunes its own
    encoder on its training texts and fits the chosen head recipe on their tuned vectors, against
    the same recipe on the frozen vectors) — and, when it does, tune on every labelled text and fit
    the head on the tuned vectors. Each finished fold is checkpointed: a killed run resumes."""
    from ..heads import HeadRecipe, load_head

    frozen_head, meta = load_head(paths.head, paths.head_meta)
    spec, recipe = meta["backbone_spec"], HeadRecipe(**meta["recipe"])
    folder = resolve_encoder(spec["name"], paths.root)
    synthetic = load_synthetic(paths)  # kept synthetic texts join every training fold (never held out)
    job = _Job(params, folder, spec.get("max_length"), n_classes, device, texts_of(paths, synthetic),
               synthetic["label_idx"].to_numpy().astype(np.int64), load_features(paths, SYNTHETIC, spec["name"])[0])
    texts, y = texts_of(paths, train), train["label_idx"].to_numpy().astype(np.int64)
    X_frozen, y_features, _ = load_features(paths, "train", spec["name"])
    if not np.array_equal(y, y_features) or len(job.syn_X) != len(job.syn_y):
        raise PipelineError("data/features/ does not match the manifests: run `dvc repro featurize`.")
    started = time.perf_counter()
    if len(val):
        y_val = val["label_idx"].to_numpy().astype(np.int64)
        model, head = job.fit(texts, y, recipe, "contrastive")
        before = predict_proba(frozen_head, load_features(paths, "val", spec["name"])[0])
        after, scored, oof = predict_proba(head, encode(model, texts_of(paths, val))), y_val, None
        mode, folds = "holdout", 0
    else:
        before, after, scored, folds = _cv_scores(params, job, texts, y, X_frozen, recipe, n_classes, checkpoint)
        oof, mode = (scored, after), "cv"
    decision = _decision(params, scored, before, after, n_classes, mode)
    report = {"enabled": True, "modality": "text", "mode": mode, "folds": folds, **decision,
              "pairs_mode": params.finetune.text.pairs, "pairs": pairs_seen(y, params.finetune.text, params.seed),
              "decide_seconds": round(time.perf_counter() - started, 2)}
    if not report["kept"]:
        paths.clear_finetuned()
        atomic.write_json(paths.finetune_meta, {"enabled": True, "kept": False, "modality": "text"})
        return report
    started = time.perf_counter()
    model, head = job.fit(texts, y, recipe, "contrastive refit") if mode == "cv" else (model, head)
    with atomic.replace_dir(paths.finetuned_encoder) as tmp:
        model.save(str(tmp))
    save_head(head, paths.finetuned_head, paths.finetune_meta,
              {"enabled": True, "kept": True, "modality": "text", "recipe": meta["recipe"], "classes": meta["classes"],
               "backbone_spec": {**spec, "tuned": True}})
    if oof is not None:
        atomic.write_npz(paths.finetune_oof, y=oof[0], proba=oof[1].astype(np.float32))
    report.update(refit_seconds=round(time.perf_counter() - started, 2))
    report["train_seconds"] = round(report["decide_seconds"] + report["refit_seconds"], 2)
    return report


def _cv_scores(params, job: "_Job", texts: list[str], y: np.ndarray, X_frozen: np.ndarray, recipe, n_classes: int,
               checkpoint) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Out-of-fold probabilities of the frozen-encoder head and of each fold's tuned encoder + head,
    on the items held out once (a class of one text is never held out); each finished fold's
    result is checkpointed and reused by a resumed run."""
    folds = stratified_folds(y, params.selection.finetune_folds, 1, params.seed + 7)
    saved = checkpoint.load() or {"folds": {}}
    before, after = np.full((len(y), n_classes), np.nan), np.full((len(y), n_classes), np.nan)
    for fold in folds:
        before[fold.held] = predict_proba(job.head(X_frozen[fold.train], y[fold.train], recipe, fold.fold),
                                          X_frozen[fold.held])
        if fold.fold not in saved["folds"]:
            fold_model, fold_head = job.fit([texts[i] for i in fold.train], y[fold.train], recipe,
                                            f"contrastive fold {fold.fold + 1}/{len(folds)}", fold.fold)
            saved["folds"][fold.fold] = torch.from_numpy(
                predict_proba(fold_head, encode(fold_model, [texts[i] for i in fold.held])))
            checkpoint.save(saved)
        after[fold.held] = saved["folds"][fold.fold].numpy()
    ok = ~np.isnan(before[:, 0])
    return before[ok], after[ok], y[ok], len(folds)


class _Job:
    """What every tuning of this run shares: the frozen encoder's folder, the settings, the seed and
    the synthetic texts (with their frozen vectors), which join every training set at
    synthetic.loss_weight in the head."""

    def __init__(self, params, folder: Path, max_length: int | None, n_classes: int, device,
                 syn_texts: list[str], syn_y: np.ndarray, syn_X: np.ndarray):
        self.params, self.folder, self.max_length, self.n_classes, self.device = params, folder, max_length, n_classes, device
        self.syn_texts, self.syn_y, self.syn_X = syn_texts, syn_y, syn_X
        policy = params.augment.text
        self.noise = (lambda text, k: augment_text(text, policy, params.seed + 100_003 * k)) \
            if params.finetune.text.augment else None

    def head(self, X: np.ndarray, y: np.ndarray, recipe, offset: int = 0, X_syn: np.ndarray | None = None):
        """The recipe's head on real vectors ``X`` plus the synthetic texts' (``X_syn``, default: frozen)."""
        X_syn = self.syn_X if X_syn is None else X_syn
        weights = np.r_[np.ones(len(y)), np.full(len(self.syn_y), self.params.synthetic.loss_weight)].astype(np.float32)
        return fit_head(np.concatenate([X, X_syn]), np.concatenate([y, self.syn_y]), self.n_classes, recipe,
                        self.params.train_head, self.params.seed + offset, weights).head

    def fit(self, texts: list[str], y: np.ndarray, recipe, desc: str, offset: int = 0):
        """The encoder tuned on ``texts`` (and the synthetic ones) and the recipe's head fitted on their tuned vectors."""
        model = tune(self.folder, self.max_length, texts + self.syn_texts, np.concatenate([y, self.syn_y]),
                     self.params.finetune.text, self.params.seed + offset, str(self.device), self.noise, desc,
                     self.params.runtime.precision)
        return model, self.head(encode(model, texts), y, recipe, offset, encode(model, self.syn_texts))


def _decision(params, y: np.ndarray, before: np.ndarray, after: np.ndarray, n_classes: int, mode: str) -> dict:
    """Keep the tuned encoder only when its gain over the frozen one is significant at the one-sided
    selection.keep_level (paired bootstrap over the scored texts), the rule images follow. Nothing
    is chosen among candidates here, so the gain carries no selection optimism; in cv mode each
    fold tunes on (k-1)/k of the labels, so it under-states what tuning on all of them gives."""
    metric, s = params.selection.metric, params.selection
    gain = paired_bootstrap(y, before, after, n_classes, metric, params.seed)
    kept = keep(gain["gain"], gain["se"], s.keep_level)
    a, b = scores(y, before, n_classes), scores(y, after, n_classes)
    where = "CV" if mode == "cv" else "val"
    reason = (f"contrastive tuning of the text encoder {'kept' if kept else 'not kept'}: {where} {metric} "
              f"{a[metric]:.3f} (frozen encoder) -> {b[metric]:.3f} (tuned), gain {gain['gain']:+.3f} ± "
              f"{gain['se']:.3f} (SE); needs > {keep_threshold(s.keep_level):.2f} SE (one-sided, level "
              f"{s.keep_level:g})")
    return {"kept": kept, "keep_level": s.keep_level, "reason": reason, "monitor": metric, f"cv_{metric}_probe": a[metric],
            f"cv_{metric}": b[metric], "cv_accuracy_probe": a["accuracy"], "cv_accuracy": b["accuracy"],
            "gain": gain["gain"], "gain_se": gain["se"], "kept_linear_probe": not kept}
