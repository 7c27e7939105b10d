"""The params.yaml sections (and parts of sections) only images read: the backbones, the
albumentations policy, the DDPM and Stable Diffusion generators. pipeline_lib.config composes them."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from ..params_base import Section


class DdpmParams(Section):
    """The small class-conditional diffusion model trained here on the real training images."""

    resolution: int = Field(32, ge=8, le=256)
    """training and sampling side in px (divisible by 2^(len(channels)-1))"""
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64])
    """the UNet2DModel's block widths (multiples of 8)"""
    train_steps: int = Field(800, ge=1)
    """DDPM training steps; trained once per training-data version and these params, then reused (800 steps: about 3
    min on 2 CPU cores)"""
    batch_size: int = Field(32, ge=1)
    """DDPM training batch size"""
    lr: float = Field(1e-3, gt=0.0)
    """DDPM learning rate (AdamW)"""
    sample_steps: int = Field(25, ge=1)
    """DDIM sampling steps"""
    guidance_scale: float = Field(2.0, ge=0.0)
    """classifier-free guidance scale (1 = off)"""
    hflip: bool = True
    """mirror the DDPM's training images"""
    checkpoint_every: int = Field(50, ge=1)
    """steps between training checkpoints (`.cache/ddpm/<key>.partial.pt`, written atomically); a killed run resumes
    from the last one and ends with the same weights; not part of the model's cache key"""

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[int]) -> list[int]:
        if not value or any(c < 8 or c % 8 for c in value):
            raise ValueError("a non-empty list of multiples of 8 (the UNet's GroupNorm needs them)")
        return value


class StableDiffusionParams(Section):
    model: str = ""
    """a local diffusers pipeline directory, or a hub id already in the Hugging Face cache"""
    prompt: str = "a photo of a {label}"
    """prompt template (`{label}`: class name, `_` as spaces); `class_prompts` overrides per class"""
    class_prompts: dict[str, str] = Field(default_factory=dict)
    """per-class prompt overrides, e.g. {ankle_boot: "a product photo of an ankle boot"}"""
    negative_prompt: str = "blurry, low quality, text, watermark"
    """what the images should not show"""
    guidance_scale: float = Field(7.5, ge=0.0)
    """classifier-free guidance scale"""
    steps: int = Field(25, ge=1)
    """denoising steps"""
    resolution: int = Field(512, ge=8, le=2048)
    """generated image side in px (a multiple of 8)"""
    img2img_strength: float = Field(0.0, ge=0.0, le=1.0)
    """> 0: variations of the real training images (img2img) instead of text-only generation"""

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value


class BackboneParams(Section):
    """One backbone, or a list of candidates that selection chooses among by cross-validation."""

    name: str | list[str] = "mobilenet_v2"
    """any torchvision classification model (`resnet50`, `efficientnet_b0`, `convnext_tiny`, …) or timm model
    (`tf_efficientnet_lite2`, …); a list makes each a candidate chosen by CV (docs/design.md, "Other backbones")"""
    weights: str | dict[str, str] = "default"
    """`default`: the file in an offline package or the torch hub cache (`~/.cache/torch/hub/checkpoints/`); or a path
    to a state-dict (`{name: path}` with several backbones)"""
    resolution: int = Field(112, ge=32, le=1024)
    """input side in px (the resolution trade-off: docs/benchmarks.md)"""
    blocks: int | None | dict[str, int | None] = 15
    """keep the first N blocks (the stem counts as one) and average-pool their output; `null` = the whole network.
    MobileNetV2 has 19: block 14's 160-channel features transfer better to Fashion-MNIST than the last 1280-d layer
    (docs/benchmarks.md). For another backbone set it to `null` or to at most its block count (resnets: 5); `{name: N}`
    cuts only the named candidates"""

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


class AugmentPolicy(Section):
    """Each transform: a probability (``*_p``) and a strength."""

    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    """probability of a horizontal flip"""
    vflip_p: float = Field(0.0, ge=0.0, le=1.0)
    """probability of a vertical flip (label-destroying for many data sets: check the preview)"""
    affine_p: float = Field(0.5, ge=0.0, le=1.0)
    """probability of scale / translate / rotate within the limits below"""
    rotate_limit: float = Field(10.0, ge=0.0, le=180.0)
    """largest rotation in degrees"""
    scale: float = Field(0.1, ge=0.0, lt=1.0)
    """largest scale change, +- this fraction"""
    translate: float = Field(0.06, ge=0.0, le=0.5)
    """largest shift, +- this fraction of the side"""
    fill: int = Field(0, ge=0, le=255)
    """value that fills borders and erased rectangles (0 = black)"""
    crop_p: float = Field(0.3, ge=0.0, le=1.0)
    """probability of a random resized crop back to the image size"""
    crop_scale_min: float = Field(0.8, gt=0.0, le=1.0)
    """smallest crop area fraction"""
    brightness_contrast_p: float = Field(0.3, ge=0.0, le=1.0)
    """probability of a brightness / contrast change"""
    brightness_limit: float = Field(0.2, ge=0.0, le=1.0)
    """largest brightness change, +- this fraction"""
    contrast_limit: float = Field(0.2, ge=0.0, le=1.0)
    """largest contrast change, +- this fraction"""
    noise_p: float = Field(0.0, ge=0.0, le=1.0)
    """probability of gaussian noise"""
    noise_std: float = Field(0.03, ge=0.0, le=1.0)
    """noise standard deviation, a fraction of the value range"""
    erase_p: float = Field(0.0, ge=0.0, le=1.0)
    """probability of random erasing: one rectangle filled with `fill`"""
    erase_scale_max: float = Field(0.33, gt=0.02, le=1.0)
    """largest erased area fraction (the smallest is 0.02)"""
