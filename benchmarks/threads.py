"""CPU thread policy: one fine-tuning epoch of the sample (20 labelled images per class, the
default fine-tuning setup) idle and beside one busy process (another CPU-bound process on the
same cores, as on any laptop), under several thread policies; each policy in a fresh process,
since OpenMP reads its settings at start-up.

    .venv/bin/python benchmarks/threads.py [--epochs 2] [--repeats 2]

Prints seconds per epoch (median over epochs and repeats) and the slowdown beside each kind of
busy neighbour: a single-threaded Python loop, and another torch job using all cores. Target
(issue 12): the default policy keeps the busy epoch within 2x its idle time.
Run it alone: the numbers are the point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import ROOT, copy_project

POLICIES = {  # name: (environment, torch threads; 0 = one per core)
    "spin (OpenMP default), all cores": ({"OMP_WAIT_POLICY": "ACTIVE"}, 0),
    "passive wait, all cores (the project's default)": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "one thread": ({}, 1),
}

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pipeline_lib.runtime import configure_threads
configure_threads({threads})
import torch
from pipeline_lib.config import load_params
from pipeline_lib.paths import Paths
from pipeline_lib.image.finetuning import Trainer
from pipeline_lib.image.networks import Images, build_model
from pipeline_lib.dataset import load_manifest
paths = Paths.for_root({project!r}); params = load_params(paths.root)
manifest, _ = load_manifest(paths)
model, _ = build_model(params, paths)
train = Images(manifest[manifest["split"] == "train"], paths, model.preprocess)
trainer = Trainer(params, model, train, torch.device("cpu"))
times = []
for epoch in range(1, {epochs} + 1):
    t = time.perf_counter(); trainer.train_epoch(epoch); times.append(time.perf_counter() - t)
print("TIMES", json.dumps(times))
"""


def epoch_seconds(project, env: dict, threads: int, epochs: int) -> list[float]:
    code = CHILD.format(root=str(ROOT), project=str(project), threads=threads, epochs=epochs)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.split("TIMES", 1)[1])


NEIGHBOURS = {  # one other busy process on the same cores
    "a busy Python loop": "while True: pass",
    "another torch job, all cores": ("import torch\nx = torch.rand(512, 512)\nwhile True: x = (x @ x).tanh()"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import contextlib
    import io

    from pipeline_lib.config import load_params
    from pipeline_lib.paths import Paths
    from pipeline_lib.stages import run_stages

    project = copy_project()
    paths = Paths.for_root(project)
    with contextlib.redirect_stderr(io.StringIO()):
        run_stages(load_params(project), paths, last="train_head")
    print(f"{os.cpu_count()} cores; one fine-tuning epoch of the sample, seconds (median of "
          f"{args.epochs} epochs x {args.repeats} runs)")
    print(f"{'policy':<50} {'idle':>7}" + "".join(f"  {n[:24]:>24} (x)" for n in NEIGHBOURS))
    for name, (env, threads) in POLICIES.items():
        idle, busy = [], {n: [] for n in NEIGHBOURS}
        for _ in range(args.repeats):
            idle += epoch_seconds(project, env, threads, args.epochs)
            for label, code in NEIGHBOURS.items():
                neighbour = subprocess.Popen([sys.executable, "-c", code])
                try:
                    time.sleep(1.0)
                    busy[label] += epoch_seconds(project, env, threads, args.epochs)
                finally:
                    neighbour.kill()
                    neighbour.wait()
        i = statistics.median(idle)
        print(f"{name:<50} {i:7.2f}" + "".join(f"  {statistics.median(b):7.2f} s {statistics.median(b) / i:11.1f}x"
                                               for b in busy.values()), flush=True)


if __name__ == "__main__":
    main()
