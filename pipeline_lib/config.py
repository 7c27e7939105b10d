"""params.yaml: one typed, validated schema, loaded in one place, and every path derived from it.

A bad value gets an error that names the key and the allowed values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import PipelineError

PARAMS_FILE = "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: Literal["sample", "folder", "manifest"] = "sample"
    path: str = "pipeline_lib/sample_data/fashion_mnist_sample.npz"
    sample_test_per_class: int = Field(100, ge=1)
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    shots_per_class: int | None = Field(20, ge=1)
    min_per_class: int = Field(3, ge=1)
    min_image_size: int = Field(8, ge=1)
    on_bad_file: Literal["quarantine", "error"] = "quarantine"
    on_unusual_mode: Literal["convert", "reject"] = "convert"
    unlabeled: str | None = None  # folder of unlabelled deployment-domain images (finetune.adapt: dann)
    zero_shot_classes: list[str] = Field(default_factory=list)  # classes with no labelled image at all

    @model_validator(mode="after")
    def _fractions(self) -> "DataParams":
        if self.unlabeled is not None and not self.unlabeled.strip():
            raise ValueError("data.unlabeled: a folder path, or null")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.val_fraction + data.test_fraction must be < 1")
        if len(set(self.zero_shot_classes)) != len(self.zero_shot_classes) or not all(
                c.strip() for c in self.zero_shot_classes):
            raise ValueError("data.zero_shot_classes must be distinct, non-empty class names")
        return self


class DdpmParams(_Section):
    """The small class-conditional diffusion model trained here on the real training images."""

    resolution: int = Field(32, ge=8, le=256)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64])
    train_steps: int = Field(800, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    sample_steps: int = Field(25, ge=1)       # DDIM steps
    guidance_scale: float = Field(2.0, ge=0.0)  # classifier-free guidance (1 = off)
    hflip: bool = True                        # mirror training images (data augmentation)
    checkpoint_every: int = Field(50, ge=1)   # steps between resumable checkpoints (not part of the result)

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[int]) -> list[int]:
        if not value or any(c < 8 or c % 8 for c in value):
            raise ValueError("a non-empty list of multiples of 8 (the UNet's GroupNorm needs them)")
        return value


class StableDiffusionParams(_Section):
    model: str = ""                           # local pipeline directory, or a hub id already in the HF cache
    prompt: str = "a photo of a {label}"      # {label}: class name with _ as spaces
    class_prompts: dict[str, str] = Field(default_factory=dict)  # per-class overrides
    negative_prompt: str = "blurry, low quality, text, watermark"
    guidance_scale: float = Field(7.5, ge=0.0)
    steps: int = Field(25, ge=1)
    resolution: int = Field(512, ge=8, le=2048)
    img2img_strength: float = Field(0.0, ge=0.0, le=1.0)  # > 0: variations of the real training images

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value


class SyntheticParams(_Section):
    generator: Literal["none", "ddpm", "stable_diffusion"] = "none"
    per_class: int = Field(20, ge=1)          # images generated per class
    ratio: float = Field(1.0, ge=0.0)         # at most ratio x real training images per class are used
    loss_weight: float = Field(1.0, ge=0.0, le=1.0)  # weight of a synthetic image in the training loss
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)  # keep images a real-data probe gives >= this for their class
    dedup_similarity: float = Field(1.0, gt=0.0, le=1.0)  # drop near-duplicates above this cosine similarity (1 = off)
    preview_per_class: int = Field(6, ge=1)
    ddpm: DdpmParams = DdpmParams()
    stable_diffusion: StableDiffusionParams = StableDiffusionParams()


class BackboneParams(_Section):
    """One backbone, or a list of candidates that selection chooses among by cross-validation."""

    name: str | list[str] = "mobilenet_v2"
    weights: str | dict[str, str] = "default"      # default | a state-dict path | {name: path}
    resolution: int = Field(112, ge=32, le=1024)
    blocks: int | None | dict[str, int | None] = 15  # first N blocks ({name: N}: per candidate; absent = all)

    @field_validator("name")
    @classmethod
    def _names(cls, value):
        names = [value] if isinstance(value, str) else value
        if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
            raise ValueError("a backbone name or a non-empty list of distinct names")
        return value

    @model_validator(mode="after")
    def _per_name(self) -> "BackboneParams":
        if isinstance(self.weights, str) and self.weights != "default" and len(self.names) > 1:
            raise ValueError("backbone.weights: with several backbones give {name: path} (or default)")
        for field in ("weights", "blocks"):
            value = getattr(self, field)
            if isinstance(value, dict) and set(value) - set(self.names):
                raise ValueError(f"backbone.{field}: {sorted(set(value) - set(self.names))} not in backbone.name")
        if isinstance(self.blocks, int) and self.blocks < 1 or isinstance(self.blocks, dict) and any(
                v is not None and v < 1 for v in self.blocks.values()):
            raise ValueError("backbone.blocks: a number >= 1 or null")
        return self

    @property
    def names(self) -> list[str]:
        return [self.name] if isinstance(self.name, str) else list(self.name)

    def weights_for(self, name: str) -> str:
        return self.weights.get(name, "default") if isinstance(self.weights, dict) else self.weights

    def blocks_for(self, name: str) -> int | None:
        if isinstance(self.blocks, dict):
            return self.blocks.get(name)
        return self.blocks


class AugmentPolicy(_Section):
    """Each transform: a probability (``*_p``) and a strength."""

    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    vflip_p: float = Field(0.0, ge=0.0, le=1.0)
    affine_p: float = Field(0.5, ge=0.0, le=1.0)
    rotate_limit: float = Field(10.0, ge=0.0, le=180.0)
    scale: float = Field(0.1, ge=0.0, lt=1.0)
    translate: float = Field(0.06, ge=0.0, le=0.5)
    fill: int = Field(0, ge=0, le=255)
    crop_p: float = Field(0.3, ge=0.0, le=1.0)
    crop_scale_min: float = Field(0.8, gt=0.0, le=1.0)
    brightness_contrast_p: float = Field(0.3, ge=0.0, le=1.0)
    brightness_limit: float = Field(0.2, ge=0.0, le=1.0)
    contrast_limit: float = Field(0.2, ge=0.0, le=1.0)
    noise_p: float = Field(0.0, ge=0.0, le=1.0)
    noise_std: float = Field(0.03, ge=0.0, le=1.0)
    erase_p: float = Field(0.0, ge=0.0, le=1.0)
    erase_scale_max: float = Field(0.33, gt=0.02, le=1.0)


class AugmentParams(_Section):
    copies: int = Field(4, ge=0, le=100)
    preview_images: int = Field(10, ge=1, le=50)
    policy: AugmentPolicy = AugmentPolicy()


class FeaturizeParams(_Section):
    batch_size: int = Field(64, ge=1)
    cache_dir: str = ".cache/features"
    num_threads: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    executor: Literal["local", "dask"] = "local"
    dask_address: str = ""        # an existing Dask scheduler (tcp://host:8786); "" = a LocalCluster
    dask_workers: int = Field(2, ge=1)  # LocalCluster worker processes
    shard_size: int = Field(256, ge=1)  # images per Dask task


class TrainHeadParams(_Section):
    kinds: list[Literal["linear", "mlp"]] = Field(default_factory=lambda: ["linear"])  # compared by selection
    C: list[float] = Field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])  # linear: inverse L2
    hidden_dim: int = Field(256, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    lr: float = Field(1e-3, gt=0.0)          # mlp only (AdamW, full batch)
    weight_decay: float = Field(1e-3, ge=0.0)  # mlp only
    max_epochs: int = Field(300, ge=1)       # mlp only: epochs (early stopping on val in holdout mode)
    patience: int = Field(30, ge=1)          # mlp only, holdout mode
    class_weighting: Literal["balanced", "none"] = "balanced"
    standardize: bool = False                # z-score features with the training statistics
    use_augmented: bool = False              # add the offline augmented copies' features to the training set

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("a non-empty list of distinct head kinds: linear, mlp")
        return value

    @field_validator("C")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(c <= 0 for c in value):
            raise ValueError("a non-empty list of positive inverse regularisation strengths")
        return sorted(set(value))


class SemiSupervisedParams(_Section):
    """Self-training on unlabelled images, a candidate that selection compares with the plain head."""

    source: Literal["none", "folder", "unused"] = "none"  # folder: data.unlabeled; unused: the pool beyond shots
    threshold: float = Field(0.9, ge=0.0, le=1.0)  # pseudo-label images the head gives a class >= this probability
    ratio: float = Field(2.0, ge=0.0)              # at most ratio x a class's labelled images get its pseudo-label
    weight: float = Field(0.5, ge=0.0, le=1.0)     # loss weight of a pseudo-labelled image (real = 1)


class SelectionParams(_Section):
    """How choices are made: cross-validation over every labelled image when they are few."""

    cv_below: int = Field(100, ge=0)     # CV when the smallest class has fewer labelled images (0 = never)
    folds: int = Field(5, ge=2)          # stratified k-fold for the heads (fewer when a class is smaller)
    repeats: int = Field(3, ge=1)        # repeated with other shuffles; spread = std over repeats
    metric: Literal["accuracy", "macro_f1"] = "macro_f1"  # ties: lower log loss
    finetune_folds: int = Field(2, ge=2)  # k-fold for the fine-tuning decision (each fold a full fine-tune)
    min_gain_se: float = Field(1.0, ge=0.0)  # keep fine-tuning only if its CV gain > this x its standard error


class FinetuneParams(_Section):
    enabled: bool = True
    unfreeze_blocks: int | Literal["all"] = Field("all")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    backbone_lr_mult: float = Field(0.3, ge=0.0)
    backbone_lr_decay: float = Field(1.0, gt=0.0, le=2.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_epochs: int = Field(1, ge=0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    patience: int = Field(10, ge=1)
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    online_augment: bool = True
    batchnorm: Literal["frozen", "train"] = "frozen"
    mixup: float = Field(0.0, ge=0.0)
    ema: float = Field(0.0, ge=0.0, lt=1.0)
    wise_alphas: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # WiSE-FT mixes tried
    adapt: Literal["none", "dann"] = "none"
    dann_weight: float = Field(0.1, ge=0.0)

    @field_validator("wise_alphas")
    @classmethod
    def _alphas(cls, value: list[float]) -> list[float]:
        if any(not 0.0 < a <= 1.0 for a in value):
            raise ValueError("each in (0, 1]: 1 = the fine-tuned weights, smaller = nearer the probe ([] = [1])")
        return value

    @field_validator("unfreeze_blocks")
    @classmethod
    def _non_negative(cls, value):
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0 (0 = head only) or 'all'")
        return value


class EvaluateParams(_Section):
    top_confusions: int = Field(5, ge=0)
    bootstrap: int = Field(1000, ge=0)
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    tta: Literal["none", "hflip"] = "hflip"
    zero_shot_model: str = ""   # local CLIP model directory for the zero-shot baseline ("" = off)


class MlflowParams(_Section):
    experiment: str = "transfer-learning"
    log_model: bool = True
    model_name: str = "transfer-classifier"
    promotion_margin: float = Field(0.0, ge=-1.0, le=1.0)

    @field_validator("experiment", "model_name")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class Params(_Section):
    seed: int = 42
    data: DataParams = DataParams()
    synthetic: SyntheticParams = SyntheticParams()
    augment: AugmentParams = AugmentParams()
    backbone: BackboneParams = BackboneParams()
    featurize: FeaturizeParams = FeaturizeParams()
    train_head: TrainHeadParams = TrainHeadParams()
    selection: SelectionParams = SelectionParams()
    semi_supervised: SemiSupervisedParams = SemiSupervisedParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()

    @model_validator(mode="after")
    def _unlabeled_folder(self) -> "Params":
        if self.semi_supervised.source == "folder" and not self.data.unlabeled:
            raise ValueError("semi_supervised.source: folder reads data.unlabeled: set it to a folder of "
                             "unlabelled images (or use source: none)")
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted keys, as DVC and MLflow show them: {"train_head.lr": 0.01, ...}."""
        return dict(_flatten(self.model_dump()))


def _flatten(obj: dict[str, Any], prefix: str = ""):
    for key, value in obj.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{key}: got {err.get('input')!r}; allowed values: {allowed}"
    if kind == "extra_forbidden":
        return f"{key}: unknown key (check the spelling; README lists every param)"
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def parse_params(raw: dict[str, Any] | None, source: str = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise PipelineError(f"invalid {source}:\n  {lines}") from None


def load_params(root: str | Path | None = None) -> Params:
    path = project_root(root) / PARAMS_FILE
    if not path.exists():
        raise PipelineError(f"{path} not found: run from the project root (where dvc.yaml is).")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path} is not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise PipelineError(f"{path} must hold a mapping of sections (data:, backbone:, ...)")
    return parse_params(raw, str(path))


def project_root(root: str | Path | None = None) -> Path:
    """The project root: the argument, $PIPELINE_ROOT, or the working directory (DVC runs stages there)."""
    return Path(root or os.environ.get("PIPELINE_ROOT") or Path.cwd()).resolve()


@dataclass(frozen=True)
class Paths:
    """Every file the stages read or write, derived from the project root in this one place."""

    root: Path

    @classmethod
    def for_root(cls, root: str | Path | None = None) -> "Paths":
        return cls(project_root(root))

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    # ingest
    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def images_dir(self) -> Path:
        return self.prepared_dir / "images"

    @property
    def manifest(self) -> Path:
        return self.prepared_dir / "manifest.parquet"

    @property
    def ingest_report(self) -> Path:
        return self.reports_dir / "ingest.json"

    # synthesize
    @property
    def synthetic_dir(self) -> Path:
        return self.root / "data" / "synthetic"

    @property
    def synthetic_manifest(self) -> Path:
        return self.synthetic_dir / "manifest.parquet"

    @property
    def ddpm_dir(self) -> Path:
        return self.models_dir / "ddpm"

    @property
    def ddpm_cache(self) -> Path:
        """Trained generators by data version and params, reused when only sampling params change."""
        return self.root / ".cache" / "ddpm"

    @property
    def synthesize_report(self) -> Path:
        return self.reports_dir / "synthesize.json"

    @property
    def synthetic_preview(self) -> Path:
        return self.reports_dir / "synthetic_preview.png"

    # augment
    @property
    def augmented_dir(self) -> Path:
        return self.root / "data" / "augmented"

    @property
    def augmented_manifest(self) -> Path:
        return self.augmented_dir / "manifest.parquet"

    @property
    def augment_report(self) -> Path:
        return self.reports_dir / "augment.json"

    @property
    def augment_preview(self) -> Path:
        return self.reports_dir / "augment_preview.png"

    # featurize
    @property
    def features_dir(self) -> Path:
        return self.root / "data" / "features"

    def features(self, split: str) -> Path:
        return self.features_dir / f"{split}.npz"

    @property
    def featurize_report(self) -> Path:
        return self.reports_dir / "featurize.json"

    # train_head
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def head(self) -> Path:
        return self.models_dir / "head.pt"

    @property
    def head_meta(self) -> Path:
        return self.models_dir / "head.json"

    @property
    def head_oof(self) -> Path:
        """The chosen head's out-of-fold (or val) probabilities of the labelled images."""
        return self.models_dir / "head_oof.npz"

    @property
    def selection_report(self) -> Path:
        return self.reports_dir / "selection.json"

    @property
    def finetune_oof(self) -> Path:
        return self.finetune_dir / "oof.npz"

    @property
    def train_head_report(self) -> Path:
        return self.reports_dir / "train_head.json"

    @property
    def selection_table(self) -> Path:
        """One row per candidate of the CV (or val) selection: what `dvc plots` draws."""
        return self.reports_dir / "plots" / "selection.csv"

    # finetune
    @property
    def finetune_dir(self) -> Path:
        return self.models_dir / "finetune"

    @property
    def finetuned_model(self) -> Path:
        return self.finetune_dir / "model.pt"

    @property
    def finetune_meta(self) -> Path:
        return self.finetune_dir / "meta.json"

    @property
    def finetune_report(self) -> Path:
        return self.reports_dir / "finetune.json"

    @property
    def finetune_history(self) -> Path:
        return self.reports_dir / "plots" / "finetune_history.csv"

    def finetune_checkpoint(self, key: str) -> Path:
        """Per-epoch checkpoint, outside DVC's outputs (DVC deletes outputs before a stage runs)."""
        return self.root / ".cache" / "checkpoints" / f"finetune-{key}.pt"

    # evaluate
    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def metrics(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.reports_dir / "predictions.csv"

    @property
    def confusion_png(self) -> Path:
        return self.reports_dir / "confusion_matrix.png"

    @property
    def reliability_png(self) -> Path:
        return self.reports_dir / "reliability.png"

    @property
    def per_class_csv(self) -> Path:
        return self.reports_dir / "per_class.csv"

    # retrain
    @property
    def retrain_lock(self) -> Path:
        return self.root / ".cache" / "retrain.lock"

    @property
    def retrain_history(self) -> Path:
        return self.reports_dir / "retrain_history.jsonl"

    # tracking and state
    @property
    def mlflow_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"

    def cache_dir(self, params: Params) -> Path:
        return self.resolve(params.featurize.cache_dir)
