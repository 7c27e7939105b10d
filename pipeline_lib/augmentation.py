"""Augmentation policies from params.yaml: albumentations for images, seeded text noise for texts.
Offline copies (stage augment) and online augmentation during fine-tuning use the same functions."""

from __future__ import annotations

import hashlib

import numpy as np

from .config import AugmentPolicy, TextNoisePolicy


def make_policy(policy: AugmentPolicy, height: int, width: int, seed: int | None = None):
    """The albumentations pipeline for images of one size (output has the same size)."""
    import albumentations as A

    transforms = [
        A.HorizontalFlip(p=policy.hflip_p),
        A.VerticalFlip(p=policy.vflip_p),
        A.Affine(scale=(1 - policy.scale, 1 + policy.scale), translate_percent=(-policy.translate, policy.translate),
                 rotate=(-policy.rotate_limit, policy.rotate_limit), border_mode=0, fill=policy.fill,
                 p=policy.affine_p),
        A.RandomResizedCrop(size=(height, width), scale=(policy.crop_scale_min, 1.0), p=policy.crop_p),
        A.RandomBrightnessContrast(brightness_limit=policy.brightness_limit,
                                   contrast_limit=policy.contrast_limit, p=policy.brightness_contrast_p),
        A.GaussNoise(std_range=(policy.noise_std, policy.noise_std), p=policy.noise_p),
        A.Erasing(scale=(0.02, policy.erase_scale_max), fill=policy.fill, p=policy.erase_p),  # random erasing
    ]
    compose = A.Compose(transforms, seed=seed)
    if seed is not None:
        # albumentations 2.0.8 gives every transform the Compose's seed, so their "does it fire"
        # draws are identical (all fire or none do). Give each transform its own stream instead.
        for transform, child in zip(compose.transforms, np.random.SeedSequence(seed).spawn(len(transforms))):
            transform.set_random_seed(int(child.generate_state(1)[0]))
    return compose


def copy_seed(seed: int, source_id: str, copy: int) -> int:
    """A stable seed per (image, copy): the same copy is produced whatever else changes."""
    digest = hashlib.sha256(f"{seed}|{source_id}|{copy}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def augment_image(pixels: np.ndarray, policy: AugmentPolicy, seed: int) -> np.ndarray:
    compose = make_policy(policy, pixels.shape[0], pixels.shape[1], seed=seed)
    return compose(image=pixels)["image"]


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
