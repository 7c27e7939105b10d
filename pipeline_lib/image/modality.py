"""Images as a modality (pipeline_lib.modality.Modality): what every stage needs from image data,
each piece delegated to the image module that does it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic
from ..modality import Modality
from . import synthesis
from .files import IMAGE_EXTENSIONS, image_id, load_image, read_rgb


class ImageModality(Modality):
    name = "image"
    noun = "image"
    one = "an image"
    folder = "images"
    suffix = ".png"
    extensions = IMAGE_EXTENSIONS
    mirror_tta = True
    generators = synthesis.GENERATORS

    # ---- items
    def load(self, source, params) -> tuple[np.ndarray, dict]:
        """Decoded, upright RGB pixels of an image file (checked and converted as data.* says), or
        of pixels already in memory (the embedded sample: greyscale becomes RGB)."""
        if isinstance(source, Path):
            loaded = load_image(source, params.data.min_image_size, params.data.on_unusual_mode,
                                params.data.max_image_side)
            pixels, mode, note = loaded.pixels, loaded.mode, loaded.note
        else:
            pixels = np.repeat(source[..., None], 3, axis=2) if source.ndim == 2 else source
            mode, note = ("L" if source.ndim == 2 else "RGB"), ""
        return pixels, {"height": pixels.shape[0], "width": pixels.shape[1], "orig_mode": mode, "note": note}

    def content_id(self, item: np.ndarray) -> str:
        return image_id(item)

    def read(self, path: Path) -> np.ndarray:
        return read_rgb(path)

    def write(self, path: Path, item: np.ndarray) -> None:
        path.write_bytes(atomic.png_bytes(item))

    def fields(self, item: np.ndarray) -> dict:
        return {"height": item.shape[0], "width": item.shape[1], "orig_mode": "RGB", "note": ""}

    # ---- Label Studio
    label_studio_tag = "Image"

    def label_studio_value(self, paths, path: str, params) -> str:
        """A local-files address the server serves (label.images: local_files) or the PNG itself."""
        from .labelling import image_address

        return image_address(paths, path, params.label)

    def label_studio_folder(self, paths, params) -> Path | None:
        return paths.prepared_dir.resolve() / self.folder if params.label.images == "local_files" else None

    def augment(self, item, params, seed: int):
        from .augmentation import augment_image

        return augment_image(item, params.augment.policy, seed)

    def augment_preview(self, train: pd.DataFrame, params, paths) -> None:
        from .augmentation import preview

        preview(train, params, paths)

    def synthetic_preview(self, frame, train, classes, params, paths) -> None:
        synthesis.preview(frame, train, classes, params, paths)

    # ---- encoders
    def encoder_names(self, params) -> list[str]:
        return params.backbone.names

    def load_encoder(self, params, root, name: str):
        from .backbones import backbone_for

        return backbone_for(params, root, name)

    def encoder_spec(self, params, name: str) -> dict:
        from .backbones import backbone_spec

        return backbone_spec(params, name)

    # ---- fine-tuning
    def finetune(self, params, paths, manifest, n_classes, device, checkpoint):
        from .finetune import run

        return run(params, paths, manifest, n_classes, device, checkpoint)

    def resume_inputs(self, params, paths) -> list[str]:
        from .domain_adaptation import target_files

        return target_files(params, paths)

    def finetuned_probabilities(self, params, paths, rows, name) -> dict:
        """The fine-tuned network on each split's images, and with flip TTA on their mirror images."""
        from ..runtime import loader_workers, pick_device
        from .networks import Images, load_finetuned
        from .networks import predict_proba as network_proba

        device, precision = pick_device(params.runtime.device), params.runtime.precision
        tuned = load_finetuned(params, paths, device)
        if tuned is None:
            return {}
        hold, workers = params.runtime.hold_images_mb, loader_workers(params.runtime.loader_workers, device)
        images = {split: Images(frame, paths, tuned.preprocess, hold_mb=hold) for split, frame in rows.items()}

        def proba(data, mirrored=False):
            return network_proba(tuned, data, device=device, mirrored=mirrored, precision=precision, workers=workers)

        out = {"finetune": {split: proba(data) for split, data in images.items()}}
        if params.evaluate.tta == "hflip":
            out["finetune_tta"] = {split: (out["finetune"][split] + proba(data, mirrored=True)) / 2
                                   for split, data in images.items()}
        return out

    def zero_shot(self, params, paths, manifest, classes, y_test) -> dict:
        """CLIP from a local folder (evaluate.zero_shot_model), prompted as synthesis prompts."""
        if not params.evaluate.zero_shot_model:
            return {}
        from ..features import load_features
        from .generators import class_prompt
        from .zero_shot import clip_zero_shot

        where = manifest.set_index("item_id")["path"]
        images = [read_rgb(paths.resolve(where[i])) for i in load_features(paths, "test")[2]]
        prompts = [class_prompt(params.synthetic.stable_diffusion, c) for c in classes]
        proba = clip_zero_shot(paths.resolve(params.evaluate.zero_shot_model), prompts, images)
        return {"clip_zero_shot": {"test_accuracy": float((proba.argmax(1) == y_test).mean()), "prompts": prompts}}

    # ---- the deployable model
    def deploy(self):
        from . import deploy

        return deploy


IMAGE = ImageModality()
__all__ = ["IMAGE", "ImageModality"]
