"""Image generators for the synthesize stage, all through diffusers.

- ``ddpm``: a small class-conditional UNet2DModel (class embeddings, classifier-free guidance by
  label dropout) trained on the real training images with a DDPM noise schedule, sampled with
  DDIM. Saved with ``save_pretrained`` (safetensors: no pickle on load).
- ``stable_diffusion``: text-to-image from class prompts, or img2img variations of the real
  images, from a local pipeline directory or a hub id already in the Hugging Face cache.

Every sample is drawn from a ``torch.Generator`` seeded from (seed, class, index), so a re-run
draws the same images.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..atomic import dir_hash
from ..errors import PipelineError
from .params import DdpmParams, StableDiffusionParams


def quiet_hf() -> None:
    """diffusers/transformers: no per-component loading bars or advice on stderr; ours suffice."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


@dataclass
class Generated:
    pixels: np.ndarray  # uint8 HWC RGB
    label_idx: int
    prompt: str
    seed: int

    @property
    def item(self) -> np.ndarray:
        return self.pixels


def _to_model_range(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] at the model resolution."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x


def _to_uint8(x: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC, resized to ``size`` (h, w) when given."""
    x = x.clamp(-1, 1)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return ((x + 1.0) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()


# --- ddpm ---------------------------------------------------------------------------------------

def build_unet(p: DdpmParams, n_classes: int):
    from diffusers import UNet2DModel

    n = len(p.channels)
    return UNet2DModel(
        sample_size=p.resolution, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=tuple(p.channels), norm_num_groups=8,
        down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1),
        num_class_embeds=n_classes + 1,  # the last index is "no class" (classifier-free guidance)
    )


def train_ddpm(images: np.ndarray, labels: np.ndarray, n_classes: int, p: DdpmParams, seed: int,
               out_dir: Path, device: torch.device, checkpoint: Path | None = None) -> dict:
    """Train the class-conditional UNet on (N, H, W, 3) uint8 images; save it to ``out_dir``.

    With ``checkpoint``, the whole training state (weights, optimiser, schedule, random generator,
    step) is written there atomically every ``p.checkpoint_every`` steps, and a run that finds it
    resumes from it: a killed run continues where it stopped and ends with the same model as an
    uninterrupted one. The checkpoint is removed once the model is saved.
    """
    from diffusers import DDPMScheduler

    if p.resolution % (2 ** (len(p.channels) - 1)):
        raise PipelineError(f"synthetic.ddpm.resolution: {p.resolution} must be divisible by "
                            f"{2 ** (len(p.channels) - 1)} (2 ** (len(channels) - 1))")
    warmup = min(200, p.train_steps // 10 + 1)

    def fresh():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        unet = build_unet(p, n_classes).to(device)
        opt = torch.optim.AdamW(unet.parameters(), lr=p.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / p.train_steps))))
        return gen, unet, opt, sched

    gen, unet, opt, sched = fresh()
    first, losses = _resume_ddpm(checkpoint, unet, opt, sched, gen)
    if first == 0 and checkpoint is not None and checkpoint.exists():  # a damaged one may be half-loaded
        gen, unet, opt, sched = fresh()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    data = _to_model_range(images, p.resolution)
    y = torch.as_tensor(labels, dtype=torch.long)
    started = time.perf_counter()
    unet.train()
    with tqdm(total=p.train_steps, initial=first, desc="synthesize: train ddpm", unit="step") as bar:
        for step in range(first, p.train_steps):
            losses.append(_ddpm_step(unet, opt, sched, scheduler, data, y, gen, p, n_classes, device))
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if checkpoint is not None and (step + 1) % p.checkpoint_every == 0 and step + 1 < p.train_steps:
                _save_ddpm_checkpoint(checkpoint, step + 1, unet, opt, sched, gen, losses)
    seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.to("cpu").save_pretrained(out_dir / "unet")
    scheduler.save_pretrained(out_dir / "scheduler")
    info = {"n_classes": n_classes, "train_images": int(len(images)), "train_steps": p.train_steps,
            "train_seconds": round(seconds, 1), "resumed_at_step": first, "final_loss": float(np.mean(losses[-100:])),
            "device": str(device)}
    (out_dir / "training.json").write_text(json.dumps(info, indent=2))
    return info


def _ddpm_step(unet, opt, sched, scheduler, data: torch.Tensor, y: torch.Tensor, gen: torch.Generator, p: DdpmParams,
               n_classes: int, device) -> float:
    """One training step on a random batch (flipped at random with p.hflip; 10 % of the labels
    dropped for classifier-free guidance); returns the loss."""
    idx = torch.randint(0, len(data), (min(p.batch_size, len(data)),), generator=gen)
    x0, cls = data[idx], y[idx].clone()
    if p.hflip:
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
    cls[torch.rand(len(idx), generator=gen) < 0.1] = n_classes  # label dropout for guidance
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
    noisy = scheduler.add_noise(x0, noise, t)
    pred = unet(noisy.to(device), t.to(device), class_labels=cls.to(device)).sample
    loss = F.mse_loss(pred, noise.to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


def _save_ddpm_checkpoint(path: Path, step: int, unet, opt, sched, gen: torch.Generator, losses: list) -> None:
    from .. import atomic

    state = {"step": step, "unet": {k: v.detach().cpu() for k, v in unet.state_dict().items()},
             "optimizer": opt.state_dict(), "schedule": sched.state_dict(), "generator": gen.get_state(),
             "losses": torch.tensor(losses)}
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume_ddpm(path: Path | None, unet, opt, sched, gen: torch.Generator) -> tuple[int, list]:
    """Load a checkpoint written by an interrupted run (tensors and plain containers only:
    ``weights_only=True``); an unreadable one is ignored and training starts over."""
    if path is None or not path.exists():
        return 0, []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        gen.set_state(state["generator"])
    except Exception:  # noqa: BLE001 - a damaged or foreign checkpoint: start from scratch
        return 0, []
    return int(state["step"]), state["losses"].tolist()


@torch.no_grad()
def sample_ddpm(model_dir: Path, n_classes: int, per_class: int, p: DdpmParams, seed: int,
                size: tuple[int, int], device: torch.device, batch_size: int = 100,
                class_ids: list[int] | None = None) -> list[Generated]:
    """``per_class`` images of every class (or of ``class_ids``), each from its own seeded noise,
    resized to ``size``."""
    from diffusers import DDIMScheduler, UNet2DModel

    quiet_hf()
    unet = UNet2DModel.from_pretrained(model_dir / "unet", use_safetensors=True).to(device).eval()
    scheduler = DDIMScheduler.from_pretrained(model_dir / "scheduler")
    jobs = [(c, i) for c in (range(n_classes) if class_ids is None else class_ids) for i in range(per_class)]
    out: list[Generated] = []
    with tqdm(total=len(jobs), desc="synthesize: sample ddpm", unit="img") as bar:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            seeds = [sample_seed(seed, c, i) for c, i in chunk]
            x = torch.stack([torch.randn(3, p.resolution, p.resolution, generator=torch.Generator().manual_seed(s))
                             for s in seeds]).to(device)
            cls = torch.tensor([c for c, _ in chunk], device=device)
            scheduler.set_timesteps(p.sample_steps)
            for t in scheduler.timesteps:
                if p.guidance_scale != 1.0:
                    both = unet(torch.cat([x, x]), t, class_labels=torch.cat([cls, torch.full_like(cls, n_classes)]))
                    cond, uncond = both.sample.chunk(2)
                    eps = uncond + p.guidance_scale * (cond - uncond)
                else:
                    eps = unet(x, t, class_labels=cls).sample
                x = scheduler.step(eps, t, x).prev_sample
            for (c, _), s, pixels in zip(chunk, seeds, _to_uint8(x, size)):
                out.append(Generated(pixels=pixels, label_idx=c, prompt="", seed=s))
            bar.update(len(chunk))
    return out


def sample_seed(seed: int, label_idx: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, label_idx, index]).generate_state(1)[0])


# --- stable diffusion ---------------------------------------------------------------------------

def _sd_location(model: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory); a clear error if absent."""
    if not model:
        raise PipelineError("synthetic.stable_diffusion.model is empty: give a local Stable Diffusion pipeline "
                            "directory (with model_index.json, e.g. from `huggingface-cli download "
                            "stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir models/sd15`) or a hub id "
                            "already in the Hugging Face cache; or use synthetic.generator: ddpm")
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise PipelineError(f"synthetic.stable_diffusion.model: {path} has no model_index.json; "
                                "it must be a diffusers pipeline directory (pipeline.save_pretrained(...))")
        return str(path), True
    if model.startswith((".", "/", "~")) or model.count("/") != 1:  # a path, not an "org/name" hub id
        raise PipelineError(f"synthetic.stable_diffusion.model: directory {path} not found")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    if not isinstance(cached, str):
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
        raise PipelineError(
            f"synthetic.stable_diffusion.model: {model!r} is neither a local directory nor in the Hugging Face "
            f"cache{' and HF_HUB_OFFLINE is set' if offline else ''}. Download it where the internet is "
            f"reachable (`huggingface-cli download {model} --local-dir <dir>`), copy <dir> here and set the "
            "param to that directory; or use synthetic.generator: ddpm")
    return model, False


def load_stable_diffusion(p: StableDiffusionParams, device: torch.device):
    from diffusers import StableDiffusionPipeline

    location, _ = _sd_location(p.model)
    quiet_hf()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        pipe = StableDiffusionPipeline.from_pretrained(location, dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False, local_files_only=True,
                                                       use_safetensors=True)  # never unpickle weights
    except (OSError, ValueError) as exc:
        raise PipelineError(f"synthetic.stable_diffusion.model: {location} could not be loaded as a Stable "
                            f"Diffusion pipeline: {str(exc).splitlines()[0]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def class_prompt(p: StableDiffusionParams, label: str) -> str:
    return p.class_prompts.get(label) or p.prompt.format(label=label.replace("_", " "))


def sample_stable_diffusion(p: StableDiffusionParams, classes: list[str], per_class: int, seed: int,
                            device: torch.device, real: dict[int, list[np.ndarray]] | None = None
                            ) -> tuple[list[Generated], str]:
    """Text-to-image per class prompt, or (img2img_strength > 0) variations of the real images."""
    pipe = load_stable_diffusion(p, device)
    img2img = None
    if p.img2img_strength > 0:
        from diffusers import StableDiffusionImg2ImgPipeline

        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        img2img.set_progress_bar_config(disable=True)
    model_hash = dir_hash(Path(pipe.config._name_or_path)) if Path(pipe.config._name_or_path).is_dir() \
        else str(pipe.config._name_or_path)
    out: list[Generated] = []
    with tqdm(total=per_class * len(classes), desc="synthesize: stable diffusion", unit="img") as bar:
        for c, label in enumerate(classes):
            prompt = class_prompt(p, label)
            for i in range(per_class):
                s = sample_seed(seed, c, i)
                gen = torch.Generator(device="cpu").manual_seed(s)
                common = dict(prompt=prompt, negative_prompt=p.negative_prompt or None, guidance_scale=p.guidance_scale,
                              num_inference_steps=p.steps, generator=gen, output_type="np")
                if img2img is not None and real and real.get(c):
                    source = real[c][i % len(real[c])]
                    init = _to_model_range(source[None], p.resolution).add(1).div(2)
                    image = img2img(image=init, strength=p.img2img_strength, **common).images[0]
                else:
                    image = pipe(height=p.resolution, width=p.resolution, **common).images[0]
                pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
                out.append(Generated(pixels=pixels, label_idx=c, prompt=prompt, seed=s))
                bar.update(1)
    return out, model_hash
