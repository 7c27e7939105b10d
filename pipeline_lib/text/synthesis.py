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

from ..atomic import dir_hash
from ..errors import PipelineError
from ..modality import Generation
from .files import read_text
from .text_normalize import normalize_text


@dataclass(frozen=True)
class GeneratedText:
    text: str
    label_idx: int
    prompt: str  # the template or the prompt that produced it
    seed: int

    @property
    def item(self) -> str:
        return self.text


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


def template(params, paths, train, classes: list[str], device) -> Generation:
    """synthetic.templates filled with each class's description: one text per (class, template)."""
    return Generation(templated(classes, params.data.class_descriptions, params.synthetic.templates))


def text_model(params, paths, train, classes: list[str], device) -> Generation:
    """A local language model's samples per class (synthetic.text_model)."""
    s = params.synthetic
    items, folder = sampled(s.text_model, classes, params.data.class_descriptions, s.per_class, params.seed,
                            paths.root, device)
    return Generation(items, dir_hash(folder))


GENERATORS = {"template": template, "text_model": text_model}


def preview(frame, train, classes: list[str], params, paths) -> None:
    """A table per class: real texts, then synthetic ones (kept first)."""
    from ..plots import plot_text_table

    k = min(params.synthetic.preview_per_class, 3)  # texts need the width of several images
    rows, n_syn = [], k if len(frame) else 0
    for c, label in enumerate(classes):
        real = [read_text(paths.resolve(p)) for p in train.loc[train["label_idx"] == c, "path"][:k]]
        syn = frame[frame["label_idx"] == c].sort_values("kept", ascending=False, kind="stable").head(n_syn)
        synthetic = [read_text(paths.synthetic_dir / "texts" / f"{i}.txt") for i in syn["item_id"]]
        rows.append((label, real + [""] * (k - len(real)) + synthetic + [""] * (n_syn - len(synthetic))))
    plot_text_table(rows, [f"real {i + 1}" for i in range(k)] + [f"synthetic {i + 1}" for i in range(n_syn)],
                    paths.synthetic_preview)
