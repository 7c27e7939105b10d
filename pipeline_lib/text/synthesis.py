"""Synthetic training texts: templates filled with each class's description (SetFit's zero-shot
recipe: "This text is about {description}."), or samples of a local causal language model
(transformers) prompted with the description. Both give a class without any labelled text
(``data.zero_shot_classes``) examples to learn from; the synthesize stage filters, caps and records
their provenance, and they never enter val or test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from .text_normalize import normalize_text


@dataclass(frozen=True)
class GeneratedText:
    text: str
    label_idx: int
    prompt: str  # the template or the prompt that produced it
    seed: int


def description(descriptions: dict[str, str], label: str) -> str:
    """data.class_descriptions[label], else the class name with underscores as spaces."""
    return descriptions.get(label, label.replace("_", " "))


def templated(classes: list[str], descriptions: dict[str, str], templates: list[str]) -> list[GeneratedText]:
    """One text per (class, template)."""
    return [GeneratedText(normalize_text(t.format(description=description(descriptions, label))), c, t, 0)
            for c, label in enumerate(classes) for t in templates]


def sampled(settings, classes: list[str], descriptions: dict[str, str], per_class: int, seed: int, root: Path,
            device) -> tuple[list[GeneratedText], Path]:
    """``per_class`` samples per class from the causal LM in ``settings.model`` (a local folder),
    prompted with ``settings.prompt``; class c's samples are seeded by ``seed + c``. Empty samples
    are dropped here (the report counts what was generated)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not settings.model:
        raise PipelineError("synthetic.generator: text_model needs synthetic.text_model.model, the folder of a local "
                            "transformers causal language model")
    folder = Path(settings.model) if Path(settings.model).is_absolute() else root / settings.model
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    except (OSError, ValueError) as exc:
        raise PipelineError(f"synthetic.text_model.model: cannot load a causal language model from {folder} "
                            f"({str(exc).splitlines()[0]})") from None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for c, label in enumerate(classes):
        prompt = settings.prompt.format(description=description(descriptions, label))
        inputs = tokenizer(prompt, return_tensors="pt").to(device)
        torch.manual_seed(seed + c)
        with torch.no_grad():
            tokens = model.generate(**inputs, do_sample=True, max_new_tokens=settings.max_new_tokens,
                                    temperature=settings.temperature, top_p=settings.top_p,
                                    num_return_sequences=per_class, pad_token_id=pad)
        texts = tokenizer.batch_decode(tokens[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [GeneratedText(normalize_text(t), c, prompt, seed + c) for t in texts]
    return out, folder
