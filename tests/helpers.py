"""Helpers for tests and benchmarks: project copies, params edits, small image data sets."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from pipeline_lib.image import fashion_mnist


def write_folder_dataset(root: Path, per_class: int = 8, classes=("trouser", "bag", "sneaker"),
                         seed: int = 0) -> Path:
    """Real Fashion-MNIST images from the embedded sample as PNG files in root/<class>/."""
    sample = fashion_mnist.load_sample()
    names = list(sample["classes"])
    rng = np.random.default_rng(seed)
    for cls in classes:
        idx = np.flatnonzero(sample["y_pool"] == names.index(cls))
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(rng.choice(idx, size=per_class, replace=False)):
            Image.fromarray(sample["x_pool"][i], "L").save(root / cls / f"{cls}_{k}.png")
    return root


def solid(size=(16, 16), colour=(200, 30, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


ROOT = Path(__file__).resolve().parents[1]


def copy_project(dst: Path | None = None) -> Path:
    """The project's source files (as git sees them, without run outputs) in a fresh git repo."""
    dst = dst or Path(tempfile.mkdtemp(prefix="project-")) / "project"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("reports/", "models/")) and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def set_params(root: Path, **sections) -> None:
    """Update sections of root/params.yaml: set_params(root, data={"shots_per_class": 5})."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """A character-level CLIP BPE vocabulary (no merges), written for CLIPTokenizer."""
    import json
    import string

    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder / "vocab.json", folder / "merges.txt"


def tiny_clip_text(folder: Path):
    """(tokenizer, text model): a randomly initialised CLIP text encoder from a tiny config."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = _write_clip_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=32)
    return tokenizer, CLIPTextModel(config).eval()


def build_tiny_stable_diffusion(target: Path) -> Path:
    """A complete, randomly initialised Stable Diffusion pipeline (UNet, VAE, CLIP text encoder,
    tokenizer, scheduler) built from tiny configs and saved with save_pretrained: the real diffusers
    loading and generation code runs against it, offline, in seconds."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer, text_encoder = tiny_clip_text(target.parent / f"{target.name}-tokenizer-src")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(target)
    return target


def build_tiny_clip(target: Path) -> Path:
    """A randomly initialised CLIPModel + CLIPProcessor from tiny configs, saved for zero-shot tests."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    tokenizer, text = tiny_clip_text(target.parent / f"{target.name}-tokenizer-src")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                              image_size=32, patch_size=8, projection_dim=32)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig.from_text_vision_configs(text.config, vision, projection_dim=32)
                      if hasattr(CLIPConfig, "from_text_vision_configs")
                      else CLIPConfig(text_config=text.config.to_dict(), vision_config=vision.to_dict(),
                                      projection_dim=32))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target


def build_tiny_text_generator(target: Path) -> Path:
    """A randomly initialised one-layer GPT-2 with all-MiniLM-L6-v2's WordPiece tokenizer: a real
    transformers causal LM folder (no text-generation weights exist offline); it samples nonsense."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from pipeline_lib.text.encoder import resolve_encoder

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_encoder("all-MiniLM-L6-v2")))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=128, n_embd=32, n_layer=1,
                                       n_head=2, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def start_mlflow_server(workdir: Path, timeout: float = 120.0):
    """A real `mlflow server` (1 worker, 127.0.0.1, sqlite backend, local artifact store) on a free
    port; returns (process, url). Stop it with tasks.prefect_server.stop_server(process)."""
    import os
    import socket
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / f"server-{port}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--artifacts-destination",
         str(workdir / "artifacts")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    from tasks.prefect_server import stop_server

    stop_server(proc)
    raise RuntimeError(f"mlflow server did not start: {(workdir / f'server-{port}.log').read_text()[-2000:]}")


def rest(url: str, endpoint: str, body: dict | None = None) -> dict:
    """One call to MLflow's REST API (GET with query parameters, or POST with a JSON body)."""
    import json
    import urllib.parse
    import urllib.request

    if body is None:
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}")
    else:
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


class Interrupted(Exception):
    """Raised by interrupt_after_epochs: a run killed right after a checkpoint."""


def interrupt_after_epochs(monkeypatch, n: int) -> None:
    """Make fine-tuning stop (raise Interrupted) right after its n-th epoch checkpoint, as a killed
    process would; monkeypatch.undo() lets the next run resume."""
    from pipeline_lib.image import finetuning

    original, saved = finetuning.Checkpoint.save, []

    def save(self, payload):
        original(self, payload)
        saved.append(1)
        if len(saved) >= n:
            raise Interrupted(f"stopped after epoch checkpoint {n}")

    monkeypatch.setattr(finetuning.Checkpoint, "save", save)


def run_cmd(args, cwd, env_extra=None, check=True, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def clone_project(src: Path, dst: Path) -> Path:
    """A full copy of a project that has run (git, DVC cache, outputs, MLflow store): what each
    end-to-end test starts from, so no test sees another's changes. Paths the MLflow store holds
    (artifact locations, model sources) are moved to the copy."""
    import sqlite3

    shutil.copytree(src, dst, symlinks=True)
    db = dst / "mlflow.db"
    if db.exists():
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for _, column, kind, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if kind.upper().startswith(("VARCHAR", "TEXT")):
                        con.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                                    f'WHERE instr("{column}", ?) > 0', (str(src), str(dst), str(src)))
    return dst


def noisy_curve(rng, n: int, n_classes: int, accuracy: float, gain: float, epochs: int = 30, drift: float = 0.9):
    """Out-of-fold predictions of a probe (row 0) and a fine-tuning curve (rows 1..epochs) whose
    true accuracy is ``accuracy`` and ``accuracy + gain`` (reached linearly by epoch 10): each item's
    correctness is a latent easiness plus noise that drifts from epoch to epoch (neighbouring epochs
    agree on most items), so the truth is known. Returns (y, one-hot probabilities (epochs + 1, n, C))."""
    from statistics import NormalDist

    import numpy as np

    y = rng.integers(0, n_classes, n)
    ease, noise = rng.normal(0, 1, n), 0.35
    state = rng.normal(0, noise, n)
    rows = []
    for epoch in range(epochs + 1):
        if epoch:
            state = drift * state + np.sqrt(1 - drift ** 2) * rng.normal(0, noise, n)
        acc = accuracy + gain * min(1.0, epoch / 10)
        threshold = NormalDist(0, float(np.sqrt(1 + noise ** 2))).inv_cdf(1 - acc)
        pred = np.where(ease + state > threshold, y, (y + rng.integers(1, n_classes, n)) % n_classes)
        rows.append(np.eye(n_classes)[pred] * 0.9 + 0.1 / n_classes)
    return y, np.stack(rows)
