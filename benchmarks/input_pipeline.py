"""Fine-tuning's input pipeline on the CPU (issue 25, item 2): images/s of a fine-tuning epoch and
peak memory, with the images held in memory or read from disk at each pass, decoded and augmented
in the training process or in DataLoader worker processes (runtime.hold_images_mb,
runtime.loader_workers); the reference is the code before the input pipeline existed (``--before``,
a git revision), measured in the same run. Two data sets: the sample's 28-px Fashion-MNIST images
(20 labelled per class) and the same images as 448-px JPEG photos (what decoding costs when the
files are a user's photos). Then featurize's forward pass over the JPEGs with 0 and 2 workers.

    .venv/bin/python benchmarks/input_pipeline.py [--epochs 3] [--repeats 2] [--before 7d0b33d]

Each run is a fresh process (default params otherwise: MobileNetV2 at 112 px, every block trained,
batches of 32, online augmentation); its first epoch is a warm-up, not counted; the variants take
turns, repeat by repeat, so a drift of the machine does not favour one. Run it alone: the numbers
are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, copy_project, set_params

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {code!r})
from pipeline_lib.runtime import configure_threads, process_environment
process_environment(); configure_threads(0)
import torch, yaml
from pathlib import Path
from pipeline_lib.config import parse_params
from pipeline_lib.paths import Paths
from pipeline_lib.image.finetuning import Trainer
from pipeline_lib.image.networks import Images, build_model
from pipeline_lib.dataset import load_manifest
paths = Paths.for_root({project!r})
raw = yaml.safe_load((Path({project!r}) / "params.yaml").read_text())
for key in ("loader_workers", "hold_images_mb"):  # unknown to the code before them
    raw["runtime"].pop(key, None)
runtime = {runtime!r}
raw["runtime"].update(runtime)
params = parse_params(raw)
manifest, _ = load_manifest(paths)
model, _ = build_model(params, paths)
frame = manifest[manifest["split"] == "train"]
kw = {{"hold_mb": runtime["hold_images_mb"]}} if "hold_images_mb" in runtime else {{}}
t = time.perf_counter(); train = Images(frame, paths, model.preprocess, **kw); load_s = time.perf_counter() - t
trainer = Trainer(params, model, train, torch.device("cpu"))
times = []
for epoch in range(1, {epochs} + 1):
    t = time.perf_counter(); trainer.train_epoch(epoch); times.append(time.perf_counter() - t)
print("RESULT", json.dumps({{"n": len(train), "load_s": load_s, "epochs": times,
      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""

EMBED = """
import json, sys, time
sys.path.insert(0, {code!r})
from pipeline_lib.runtime import configure_threads, process_environment
process_environment(); configure_threads(0)
import torch
from pipeline_lib.image.backbones import load_backbone
files = {files!r}
backbone = load_backbone("mobilenet_v2", resolution=112, blocks=15).to(torch.device("cpu"))
backbone.workers = {workers}
backbone.embed(files[:64], 64, torch.device("cpu"))  # warm-up
t = time.perf_counter(); backbone.embed(files, 64, torch.device("cpu")); s = time.perf_counter() - t
print("RESULT", json.dumps({{"n": len(files), "seconds": s}}))
"""

VARIANTS = {  # name: (code root: None = this checkout, runtime overrides)
    "before (every pixel in memory, no workers)": ("before", {}),
    "held in memory, 0 workers (default)": (None, {"loader_workers": 0, "hold_images_mb": 2048}),
    "held in memory, 1 worker": (None, {"loader_workers": 1, "hold_images_mb": 2048}),
    "held in memory, 2 workers": (None, {"loader_workers": 2, "hold_images_mb": 2048}),
    "read from disk, 0 workers": (None, {"loader_workers": 0, "hold_images_mb": 0}),
    "read from disk, 2 workers": (None, {"loader_workers": 2, "hold_images_mb": 0}),
}


def child(template: str, **fields) -> dict:
    out = subprocess.run([sys.executable, "-c", template.format(**fields)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}).stdout
    return json.loads(out.split("RESULT", 1)[1])


def checkout(rev: str) -> Path:
    """pipeline_lib as it was at ``rev``, in a temporary folder."""
    dst = Path(tempfile.mkdtemp(prefix="before-"))
    archive = subprocess.run(["git", "archive", rev, "pipeline_lib"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    return dst


def photo_project(sample: Path, side: int = 448) -> tuple[Path, list[str]]:
    """A folder project of the sample's labelled and test images as ``side``-px JPEG files."""
    import pandas as pd
    from PIL import Image

    from pipeline_lib.image.files import read_rgb
    from pipeline_lib.paths import Paths

    project, paths = copy_project(), Paths.for_root(sample)
    manifest = pd.read_parquet(paths.manifest)
    files = []
    for row in manifest[manifest["split"].isin(["train", "test"])].itertuples():
        out = project / "data" / "photos" / row.label / f"{row.item_id}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(read_rgb(paths.resolve(row.path))).resize((side, side), Image.BICUBIC).save(out, quality=90)
        files.append(str(out))
    set_params(project, data={"source": "folder", "path": "data/photos", "shots_per_class": 20})
    return project, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="per run, the first one not counted")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--before", default="7d0b33d", help="git revision of the reference code")
    args = parser.parse_args()

    from pipeline_lib.config import load_params
    from pipeline_lib.paths import Paths
    from pipeline_lib.stages import run_stages

    before = checkout(args.before)
    sample = copy_project()
    with contextlib.redirect_stderr(io.StringIO()):
        run_stages(load_params(sample), Paths.for_root(sample), last="train_head")
        photos, files = photo_project(sample)
        run_stages(load_params(photos), Paths.for_root(photos), last="train_head")
    print(f"{os.cpu_count()} cores; fine-tuning epochs (default params, 112 px, batches of 32), median of "
          f"{args.epochs - 1} epochs x {args.repeats} runs; peak RSS of the training process and of its largest child")
    for label, project in (("28-px sample PNGs", sample), ("448-px JPEG photos", photos)):
        runs: dict[str, list] = {name: [] for name in VARIANTS}
        for repeat in range(args.repeats):
            for name in (list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))):
                code, runtime = VARIANTS[name]
                runs[name].append(child(CHILD, code=str(before if code == "before" else ROOT), project=str(project),
                                        runtime=runtime, epochs=args.epochs))
        print(f"\n{label}")
        print(f"{'variant':<46} {'images/s':>9} {'epoch s':>8} {'load s':>7} {'RSS MB':>7} {'child MB':>10}")
        for name, done in runs.items():
            epoch = statistics.median(t for r in done for t in r["epochs"][1:])
            print(f"{name:<46} {done[0]['n'] / epoch:9.1f} {epoch:8.2f} {statistics.median(r['load_s'] for r in done):7.2f}"
                  f" {max(r['rss_mb'] for r in done):7.0f} {max(r['children_rss_mb'] for r in done):10.0f}", flush=True)
    print(f"\nfeaturize's forward pass over the {len(files)} JPEG photos (MobileNetV2, 112 px, batches of 64)")
    for workers in (0, 2):
        runs = [child(EMBED, code=str(ROOT), files=files, workers=workers) for _ in range(args.repeats)]
        seconds = statistics.median(r["seconds"] for r in runs)
        label = "decoded in a thread (default)" if workers == 0 else f"{workers} DataLoader workers"
        print(f"{label:<46} {len(files) / seconds:9.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
