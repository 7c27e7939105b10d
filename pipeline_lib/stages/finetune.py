"""Stage finetune: fine-tune (or tune) the pretrained encoder on the labels, with the modality's
runner (pipeline_lib.modalities): LP-FT with selective unfreezing for images
(pipeline_lib.image.finetune), contrastive tuning of the sentence encoder for texts
(pipeline_lib.text.finetune). Each decides on all labelled items (k-fold CV, or the val split)
whether the fine-tuned model beats the head, with the optimism of its own choices removed, and
refits on every label when it does. A modality with nothing to fine-tune says so.

Checkpoints are written after every epoch (or fold) outside DVC's outputs; a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from .. import atomic, modalities
from ..atomic import Checkpoint
from ..config import Params
from ..dataset import load_manifest
from ..paths import Paths
from ..runtime import use
from ..selection import undecidable

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr_head"]


def config_hash(params: Params, paths: Paths) -> str:
    """What a checkpoint must match to be resumed: the params and the inputs (data, head)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in params.model_dump().items()
                                   if k in ("seed", "backbone", "finetune", "augment", "synthetic", "train_head",
                                            "selection", "semi_supervised")}, sort_keys=True).encode())
    h.update(json.dumps(modalities.of_dataset(paths).resume_inputs(params, paths)).encode())
    for f in (paths.manifest, paths.head, paths.synthetic_manifest):
        h.update(f.read_bytes() if f.exists() else b"")
    return h.hexdigest()[:16]


def run(params: Params, paths: Paths) -> dict:
    """Fine-tune with the data set's modality (see the module docstring)."""
    paths.finetune_dir.mkdir(parents=True, exist_ok=True)
    if not params.finetune.enabled:
        return _disabled(paths, {"enabled": False})
    manifest, classes = load_manifest(paths)
    labelled = manifest[manifest["split"].isin(["train", "val"])]
    too_few = undecidable(labelled["label_idx"].to_numpy()) if not (manifest["split"] == "val").any() else None
    if too_few:
        return _disabled(paths, {"enabled": True, "kept": False, "mode": "none", "kept_linear_probe": True,
                                 "reason": f"fine-tuning not tried: {too_few}"})
    modality = modalities.of_dataset(paths)
    device = use(params.runtime)
    checkpoint = Checkpoint(paths.finetune_checkpoint(config_hash(params, paths)), device)
    result = modality.finetune(params, paths, manifest, len(classes), device, checkpoint)
    if result is None:
        return _disabled(paths, {"enabled": True, "kept": False, "mode": "none", "kept_linear_probe": True,
                                 "reason": f"fine-tuning not tried: the {modality.name} modality has no encoder to tune"})
    report, history = result
    atomic.write_json(paths.finetune_report, report)
    with atomic.atomic_path(paths.finetune_history) as tmp:  # declared in dvc.yaml: no epochs, no rows
        pd.DataFrame(history, columns=None if history else HISTORY_COLUMNS).to_csv(tmp, index=False)
    checkpoint.clear()
    return report


def _disabled(paths: Paths, reason: dict) -> dict:
    paths.clear_finetuned()
    atomic.write_json(paths.finetune_meta, reason)
    atomic.write_json(paths.finetune_report, reason)
    with atomic.atomic_path(paths.finetune_history) as tmp:
        pd.DataFrame(columns=HISTORY_COLUMNS).to_csv(tmp, index=False)
    return reason
