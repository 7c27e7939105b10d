"""Text noise from params.yaml (augment.text): seeded word dropout, span deletion, swaps and typos.
Offline copies (stage augment) and the contrastive tuning's noisy views use the same function."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import Params
from ..dataset import copy_seed
from ..paths import Paths
from .files import read_text
from .params import TextNoisePolicy


def augment_text(text: str, policy: TextNoisePolicy, seed: int) -> str:
    """A noisy copy of a text: word dropout, span deletion, neighbour swaps, character typos, each
    firing with its probability from its own seeded stream. Only the text's own words are removed,
    moved or misspelt (never one of another text), and at least one word stays."""
    streams = [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(4)]
    words = text.split(" ")
    drop, span, swap, typo = streams
    if drop.random() < policy.word_dropout_p and len(words) > 1:
        kept = [w for w in words if drop.random() >= policy.word_dropout_rate]
        words = kept or [words[int(drop.integers(len(words)))]]
    if span.random() < policy.deletion_p and len(words) > 2:
        n = int(span.integers(0, int(len(words) * policy.deletion_max) + 1))
        start = int(span.integers(0, len(words) - n + 1))
        words = words[:start] + words[start + n:] if n < len(words) else words
    if swap.random() < policy.word_swap_p and len(words) > 1:
        for _ in range(max(1, round(policy.word_swap_rate * len(words)))):
            i = int(swap.integers(len(words) - 1))
            words[i], words[i + 1] = words[i + 1], words[i]
    if typo.random() < policy.typo_p:
        words = [_typo(w, typo) if len(w) > 1 and typo.random() < policy.typo_rate else w for w in words]
    return " ".join(words)


def _typo(word: str, rng: np.random.Generator) -> str:
    """One character-level slip: swap two neighbouring letters, drop one, or double one."""
    i = int(rng.integers(len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    return word[:i + 1] + word[i] + word[i + 1:]


def preview(train: pd.DataFrame, params: Params, paths: Paths) -> None:
    """Table PNG: one row per sample text (one per class first), the original then noisy copies."""
    from ..plots import plot_text_table

    picks = train.groupby("label_idx", sort=True).head(1).head(params.augment.preview_images)
    rows = []
    for row in picks.itertuples(index=False):
        text = read_text(paths.resolve(row.path))
        rows.append((row.label, [text] + [augment_text(text, params.augment.text, copy_seed(params.seed, row.item_id, c))
                                          for c in range(2)]))
    plot_text_table(rows, ["original", "noisy copy 1", "noisy copy 2"], paths.augment_preview)
