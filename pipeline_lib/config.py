"""params.yaml: one typed, validated schema, loaded in one place, and every path derived from it.

A bad value gets an error that names the key and the allowed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .errors import PipelineError
from .image.params import AugmentPolicy, BackboneParams, DdpmParams, StableDiffusionParams
from .label.params import LabelParams
from .params_base import Section as _Section
from .paths import project_root
from .text.params import TextFinetuneParams, TextGeneratorParams, TextNoisePolicy, TextParams

PARAMS_FILE = "params.yaml"


class DataParams(_Section):
    source: Literal["sample", "folder", "manifest"] = "sample"
    """`sample` (an .npz in the embedded sample's format), `folder`, `manifest`"""
    path: str = "pipeline_lib/sample_data/fashion_mnist_sample.npz"
    """the sample file, the image folder, or the CSV manifest (a DVC dependency of ingest)"""
    sample_test_per_class: int = Field(100, ge=1)
    """sample source only: test images per class (the embedded sample holds 100)"""
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """holdout mode only (see `selection.cv_below`): share of each class's labelled pool for validation"""
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """share for test, used only when the source names no test rows"""
    shots_per_class: int | None = Field(20, ge=1)
    """labelled images kept per class (train and val together); `null` = all"""
    min_per_class: int = Field(3, ge=1)
    """classes with fewer usable images are dropped (or an error)"""
    min_image_size: int = Field(8, ge=1)
    """minimum width and height in px"""
    max_image_side: int = Field(1024, ge=0)
    """prepared images are downscaled so that their longer side is at most this many px (the originals are
    untouched; 0 = keep every size); more than the backbone's resolution is never used"""
    on_bad_file: Literal["quarantine", "error"] = "quarantine"
    """`quarantine` (report and go on) or `error` (stop)"""
    on_unusual_mode: Literal["convert", "reject"] = "convert"
    """CMYK/16-bit/RGBA/palette: `convert` (noted) or `reject`"""
    unlabeled: str | None = None
    """folder of unlabelled images (any layout) for `semi_supervised.source: folder` and `finetune.adapt: dann` (for
    DANN, `null` = the training images without their labels)"""
    zero_shot_classes: list[str] = Field(default_factory=list)
    """classes with no labelled image: learnt from `stable_diffusion` images of their prompt (docs/design.md, "A class with no
    labelled image at all")"""
    class_descriptions: dict[str, str] = Field(default_factory=dict)
    """text data sets: what each class is about, `{refund: "the customer asks for money back"}`, for the zero-shot row of
    evaluate ("This text is about <description>."); a class without one is described by its name"""

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


class SyntheticParams(_Section):
    generator: Literal["none", "ddpm", "stable_diffusion", "template", "text_model"] = "none"
    """images: `ddpm` (small diffusion model trained on the real training images), `stable_diffusion` (local weights);
    texts: `template` (synthetic.templates filled with each class description), `text_model` (a local text
    generator, synthetic.text_model); `none`"""
    per_class: int = Field(20, ge=1)
    """images (or generated texts) per class; `template` makes one text per template"""
    ratio: float = Field(1.0, ge=0.0)
    """at most ratio × (real training images of the class) synthetic ones are used, most confident first"""
    loss_weight: float = Field(1.0, ge=0.0, le=1.0)
    """weight of a synthetic image in the head's and fine-tuning's loss (real = 1)"""
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    """keep only images a probe trained on the real images assigns to their class with at least this probability (0 =
    no filter)"""
    dedup_similarity: float = Field(1.0, gt=0.0, le=1.0)
    """drop near-duplicates whose feature cosine similarity exceeds this (1 = off)"""
    preview_per_class: int = Field(6, ge=1)
    """real and synthetic columns per class in `reports/synthetic_preview.png`"""
    ddpm: DdpmParams = DdpmParams()
    stable_diffusion: StableDiffusionParams = StableDiffusionParams()
    templates: list[str] = Field(default_factory=lambda: [
        "This text is about {description}.", "{description}", "A text about {description}.",
        "Someone writes about {description}."])
    """text, `template`: one synthetic text per template and class ({description} as in the prompt), SetFit's
    zero-shot recipe"""
    text_model: TextGeneratorParams = TextGeneratorParams()

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        if not value or any("{description}" not in t for t in value):
            raise ValueError("a non-empty list, each template containing {description}")
        return value


class AugmentParams(_Section):
    copies: int = Field(0, ge=0, le=100)
    """augmented copies per real training image, featurized for train_head.use_augmented (0 = none;
    fine-tuning augments online without them)"""
    preview_images: int = Field(10, ge=1, le=50)
    """rows of the preview grid"""
    policy: AugmentPolicy = AugmentPolicy()
    text: TextNoisePolicy = TextNoisePolicy()


class FeaturizeParams(_Section):
    batch_size: int = Field(64, ge=1)
    """images per forward pass"""
    cache_dir: str = ".cache/features"
    """content-addressed feature cache (not versioned; safe to delete)"""
    cache_shard_items: int = Field(4096, ge=1)
    """vectors per file of the feature cache: featurize embeds this many, then writes them as one shard (an interrupted
    run keeps the shards it wrote)"""
    leak_similarity: float = Field(0.99, gt=0.0, le=1.0)
    """a test item whose features' cosine similarity to a labelled item exceeds this is reported as a near-duplicate
    leak (ingest reports exact copies; this finds re-encoded or retouched ones: a brightened JPEG copy scored 0.995;
    on the Fashion-MNIST sample no distinct pair exceeds 0.99, the 99th percentile of each test image's nearest is 0.985)"""


class RuntimeParams(_Section):
    """Where and how the stages compute; read by every stage (pipeline_lib.runtime.use)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` (CUDA when available), `cpu`, `cuda`"""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """mixed precision of forward passes and fine-tuning: `auto` (CUDA: bf16 where the GPU supports it, else fp16 with
    a gradient scaler; CPU: fp32), or one of them; features are always stored as fp32"""
    num_threads: int = Field(0, ge=0)
    """torch CPU threads, 0 = `OMP_NUM_THREADS` if set, else one per core this process may use (affinity, cgroup
    quota); OpenMP waits passively: see docs/benchmarks.md"""
    executor: Literal["local", "dask"] = "local"
    """`local` (this process) or `dask`: featurize's uncached items and `flows.predict`'s inputs in shards on a Dask
    cluster (same results; docs/operations.md)"""
    dask_address: str = ""
    """an existing Dask scheduler (or `$DASK_SCHEDULER_ADDRESS`); `""` = start a LocalCluster"""
    dask_workers: int = Field(2, ge=1)
    """LocalCluster worker processes"""
    shard_size: int = Field(256, ge=1)
    """items per Dask task"""
    loader_workers: int | Literal["auto"] = Field("auto")
    """worker processes that decode and augment images for fine-tuning, featurize and scoring (a torch DataLoader,
    pinned memory on CUDA): `auto` = none on the CPU (the forward and backward passes already use every core:
    docs/benchmarks.md "Input pipeline"), one per usable core up to 8 on CUDA; any number gives the same results"""
    hold_images_mb: int = Field(2048, ge=0)
    """fine-tuning and scoring keep decoded images in memory up to this size (MB, read from the files' headers); a
    larger set is read from disk on every pass instead (by the loader's workers when there are any)"""

    @field_validator("loader_workers")
    @classmethod
    def _workers(cls, v):
        if v != "auto" and v < 0:
            raise ValueError("loader_workers: auto, 0 (decode in the training process) or a number of processes")
        return v


class TrainHeadParams(_Section):
    kinds: list[Literal["linear", "mlp"]] = Field(default_factory=lambda: ["linear"])
    """head kinds compared by selection: `linear` (multinomial logistic regression, scikit-learn L-BFGS) and/or `mlp`
    (one hidden layer)"""
    C: list[float] = Field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0])
    """inverse L2 strengths of the linear head compared by selection (9 values; with the top at 3, C = 3 won most runs
    and the head trailed `LogisticRegressionCV` by up to 2.8 points)"""
    hidden_dim: int = Field(256, ge=1)
    """MLP hidden units"""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """MLP dropout on the features and hidden layer; the head's dropout during fine-tuning is `finetune.dropout`"""
    lr: float = Field(1e-3, gt=0.0)
    """MLP: AdamW learning rate (full batch)"""
    weight_decay: float = Field(1e-3, ge=0.0)
    """MLP: AdamW weight decay"""
    max_epochs: int = Field(300, ge=1)
    """MLP: epochs (early stopping on val in holdout mode)"""
    patience: int = Field(30, ge=1)
    """MLP, holdout mode: epochs without val-loss improvement; the best epoch is kept"""
    class_weighting: Literal["balanced", "none"] = "balanced"
    """`balanced` (inverse class frequency) or `none`"""
    standardize: bool = False
    """z-score features with the training statistics first (a slightly better probe on the sample, CV macro-F1 0.769 vs
    0.753, but fine-tuning from it collapsed in the first epoch and was rejected by CV)"""
    use_augmented: bool = False
    """add the offline augmented copies to the head's training set"""

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

    source: Literal["none", "folder", "unused"] = "none"
    """`folder` (`data.unlabeled`) or `unused` (the pool beyond `shots_per_class`, labels hidden): adds a self-training
    twin of every head recipe (docs/design.md, "Unlabelled images")"""
    threshold: float = Field(0.9, ge=0.0, le=1.0)
    """pseudo-label an unlabelled image when the head gives a class at least this probability"""
    ratio: float = Field(2.0, ge=0.0)
    """at most this × a class's labelled images get its pseudo-label, most confident first"""
    weight: float = Field(0.5, ge=0.0, le=1.0)
    """loss weight of a pseudo-labelled image (real = 1)"""
    finetune: bool = False
    """also fine-tune on the unlabelled images the probe labels confidently (the same threshold, ratio and weight; in
    CV each fold's probe labels them, so its held-out images never shape its pseudo-labels)"""


class SelectionParams(_Section):
    """How choices are made: cross-validation over every labelled image when they are few."""

    cv_below: int = Field(100, ge=0)
    """cross-validate over all labelled images when the smallest class has fewer; else a val split (0 = always a val
    split)"""
    folds: int = Field(5, ge=2)
    """stratified folds for the heads (fewer when a class has fewer labelled images, at least 2)"""
    repeats: int = Field(3, ge=1)
    """CV repeats with other shuffles; the spread in the table is the std over repeats"""
    metric: Literal["accuracy", "macro_f1"] = "macro_f1"
    """`macro_f1` or `accuracy` of the pooled out-of-fold predictions (ties: lower log loss)"""
    tie_se: float = Field(0.0, ge=0.0)
    """linear heads that differ from the best candidate only in C and score within this many standard errors of it (its
    sampling error over the labelled items) count as tied, and the best CV score smoothed over neighbouring C values
    wins among them (0 = exact ties only: the plain grid search)"""
    finetune_folds: int = Field(2, ge=2)
    """folds of the fine-tuning decision (each fold is a full fine-tuning run)"""
    keep_level: float = Field(0.1, gt=0.0, lt=0.5)
    """fine-tuning (or a tuned text encoder) is kept only if its bias-corrected CV gain over the probe is significant
    at this one-sided level: the share of useless changes the rule may keep (0.1: 1.28 standard errors)"""


class FinetuneParams(_Section):
    enabled: bool = True
    """run the finetune stage"""
    unfreeze_blocks: int | Literal["all"] = Field("all")
    """last N backbone blocks trained (0 = head only, `all`)"""
    epochs: int = Field(30, ge=1)
    """maximum epochs"""
    batch_size: int = Field(32, ge=1)
    """images per training step"""
    lr: float = Field(1e-3, ge=0.0)
    """head learning rate (AdamW; 0 = a null control: the run reproduces the probe and is never kept)"""
    backbone_lr_mult: float = Field(0.3, ge=0.0)
    """backbone lr = lr × this (discriminative learning rates)"""
    backbone_lr_decay: float = Field(1.0, gt=0.0, le=2.0)
    """layer-wise decay: the deepest block trains at the backbone lr, each block nearer the input at this times the
    next one's (1 = one rate; up to 2, > 1 speeds the early blocks up)"""
    weight_decay: float = Field(0.01, ge=0.0)
    """AdamW weight decay"""
    warmup_epochs: int = Field(5, ge=0)
    """linear warm-up, then cosine decay to 0 (5 of 30 epochs: +0.5 points over 1 at 20 labels per class, 3 of 3 seeds
    better; docs/benchmarks.md)"""
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    """label smoothing of the training loss"""
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    """dropout on the head's input"""
    grad_clip: float = Field(1.0, ge=0.0)
    """max gradient norm (0 = off)"""
    patience: int = Field(30, ge=1)
    """early stopping: epochs without improvement; the best epoch is restored (30 = the whole schedule: on the sample
    the CV curve dips for about 10 epochs before it climbs above the probe)"""
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    """what "better" means, for early stopping and for evaluate's choice between head and fine-tuned model:
    `val_accuracy` (ties: lower val loss) or `val_loss` (docs/benchmarks.md)"""
    online_augment: bool = True
    """apply `augment.policy` on the fly"""
    batchnorm: Literal["frozen", "train"] = "frozen"
    """`frozen`: every BN layer keeps its ImageNet running statistics (eval mode; the affine weights of unfrozen blocks
    still train); `train`: BN layers of unfrozen blocks use batch statistics and update theirs (measured worse here,
    docs/benchmarks.md)"""
    mixup: float = Field(0.0, ge=0.0)
    """mixup with Beta(a, a) mixing weights (0 = off)"""
    ema: float = Field(0.0, ge=0.0, lt=1.0)
    """decay of an exponential moving average of the weights (0 = off); validation, early stopping and the saved model
    then use the averaged weights"""
    wise_alphas: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    """WiSE-FT: the deployed weights are (1 − a) × the probe's + a × the fine-tuned ones, a chosen on the pooled CV
    predictions (or val); `[]` = 1 only"""
    adapt: Literal["none", "dann"] = "none"
    """`dann`: domain-adversarial training towards `data.unlabeled` (docs/design.md, "Synthetic data and domain adaptation")"""
    dann_weight: float = Field(0.1, ge=0.0)
    """final weight of the reversed domain gradient (ramped up from 0)"""
    text: TextFinetuneParams = TextFinetuneParams()
    """text data sets: SetFit-style contrastive tuning of the sentence encoder (the settings above are for images)"""

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
    """worst-confused class pairs listed in metrics.json"""
    bootstrap: int = Field(1000, ge=0)
    """bootstrap resamples for the confidence intervals (0 = off)"""
    ci_level: float = Field(0.95, gt=0.0, lt=1.0)
    """confidence level"""
    tta: Literal["none", "hflip"] = "hflip"
    """also score each model averaged with its horizontal mirror (test-time augmentation); the variant wins only if
    better on val. `none` when mirrored images change the class (text, digits)"""
    zero_shot_model: str = ""
    """local CLIP model directory (transformers layout): adds a zero-shot baseline row"""


class AdviseParams(_Section):
    enabled: bool = True
    """run the advise stage (learning curve, what to label next, suspicious labels, data health)"""
    fractions: list[float] = Field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0])
    """fractions of each CV fold's labelled part the learning curve trains on"""
    repeats: int = Field(3, ge=1)
    """learning-curve repeats (other fold splits and subsamples)"""
    label_next: int = Field(20, ge=1)
    """how many unlabelled items to suggest for labelling (from data.unlabeled, else the pool beyond shots_per_class)"""
    strategy: Literal["auto", "typical", "margin", "random"] = "auto"
    """`typical` (representative items of uncovered clusters), `margin` (uncertain and diverse), `auto`: typical while
    the median class has fewer than `typical_below` labels, margin after"""
    typical_below: int = Field(5, ge=0)
    """labels per class under which `auto` picks typical items (docs/benchmarks.md: the simulation)"""
    suspects: int = Field(20, ge=0)
    """labelled items listed as possibly mislabelled (most suspicious first)"""
    duplicate_similarity: float = Field(0.98, gt=0.0, le=1.0)
    """labelled pairs with a feature cosine similarity above this and different labels are listed"""
    min_per_class: int = Field(5, ge=1)
    """a class with fewer labels is listed as at risk"""

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if len(value) < 3 or any(not 0.0 < f <= 1.0 for f in value) or len(set(value)) != len(value):
            raise ValueError("at least 3 distinct fractions in (0, 1] (the power law has 3 parameters)")
        return sorted(value)


class MlflowParams(_Section):
    experiment: str = "transfer-learning"
    """MLflow experiment name"""
    log_model: bool = True
    """log the deployed classifier with each run (and register it)"""
    model_name: str = "transfer-classifier"
    """registered model name"""
    promotion_level: float = Field(0.05, gt=0.0, lt=0.5)
    """the challenger becomes `champion` only if McNemar's exact one-sided test on the same test items says it makes
    fewer errors at this level (a tie never)"""

    @field_validator("experiment", "model_name")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class Params(_Section):
    seed: int = 42
    """seeds the split, the shots subsample and head training"""
    data: DataParams = DataParams()
    synthetic: SyntheticParams = SyntheticParams()
    augment: AugmentParams = AugmentParams()
    backbone: BackboneParams = BackboneParams()
    text: TextParams = TextParams()
    featurize: FeaturizeParams = FeaturizeParams()
    train_head: TrainHeadParams = TrainHeadParams()
    selection: SelectionParams = SelectionParams()
    semi_supervised: SemiSupervisedParams = SemiSupervisedParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    advise: AdviseParams = AdviseParams()
    label: LabelParams = LabelParams()
    mlflow: MlflowParams = MlflowParams()
    runtime: RuntimeParams = RuntimeParams()

    @model_validator(mode="after")
    def _unlabeled_folder(self) -> "Params":
        if self.semi_supervised.source == "folder" and not self.data.unlabeled:
            raise ValueError("semi_supervised.source: folder reads data.unlabeled: set it to a folder of "
                             "unlabelled images (or use source: none)")
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted keys, as DVC and MLflow show them: {"train_head.lr": 0.01, ...}."""
        return dict(_flatten(self.model_dump()))

    def switched_off(self) -> list[str]:
        """Dotted keys (a section's key covers its subkeys) of settings that change nothing with these
        params: the parts they configure are off. The switches themselves stay on."""
        off = []
        if self.synthetic.generator == "none":
            off += [f"synthetic.{k}" for k in type(self.synthetic).model_fields if k != "generator"]
        else:
            off += [f"synthetic.{g}" for g in ("ddpm", "stable_diffusion", "text_model") if g != self.synthetic.generator]
            off += ["synthetic.templates"] if self.synthetic.generator != "template" else []
        ft = self.finetune
        if not ft.enabled:
            off += [f"finetune.{k}" for k in type(ft).model_fields if k != "enabled"]
        elif ft.adapt == "none":
            off.append("finetune.dann_weight")
        if self.augment.copies == 0 and not (ft.enabled and ft.online_augment):
            off += ["augment.policy", "augment.preview_images"]
        if self.runtime.executor == "local":
            off += ["runtime.dask_address", "runtime.dask_workers", "runtime.shard_size"]
        if "mlp" not in self.train_head.kinds:
            off += [f"train_head.{k}" for k in ("hidden_dim", "lr", "weight_decay", "max_epochs", "patience")]
        if self.semi_supervised.source == "none":
            off += [f"semi_supervised.{k}" for k in ("threshold", "ratio", "weight", "finetune")]
        if self.data.source != "sample":
            off.append("data.sample_test_per_class")
        else:  # the embedded sample is images
            off += ["text", "augment.text", "finetune.text"]
        if self.evaluate.bootstrap == 0:
            off.append("evaluate.ci_level")
        if not self.mlflow.log_model:
            off += ["mlflow.model_name", "mlflow.promotion_level"]
        return off

    def active(self) -> dict[str, Any]:
        """``flat()`` without the switched-off settings: what a reader of one run needs to see."""
        off = self.switched_off()
        return {k: v for k, v in self.flat().items()
                if not any(k == o or k.startswith(o + ".") for o in off)}


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
        return f"{key}: unknown key (check the spelling; docs/params.md lists every param)"
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


MOVED = {f"featurize.{key}": f"runtime.{key}"
         for key in ("device", "num_threads", "executor", "dask_address", "dask_workers", "shard_size")}


def parse_params(raw: dict[str, Any] | None, source: str = PARAMS_FILE) -> Params:
    for old, new in MOVED.items():
        section, key = old.split(".")
        if isinstance((raw or {}).get(section), dict) and key in raw[section]:
            raise PipelineError(f"invalid {source}: {old} has moved to {new} (a `runtime:` section read by every "
                                f"stage): move the value there")
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
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path} is not valid YAML: {exc}") from None
    if raw is None:
        raise PipelineError(f"{path} is empty: it would train the built-in sample instead of your data. Restore it "
                            "(`git checkout params.yaml`) or write at least `data: {source: folder, path: data/raw}`.")
    if not isinstance(raw, dict):
        raise PipelineError(f"{path} must hold a mapping of sections (data:, backbone:, ...)")
    return parse_params(raw, str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (DVC refuses it too; the
    flows would silently take the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

