"""Fine-tuning side by side on the CPU (issue 25), idle and beside one busy process (a Python loop;
another torch job using all cores), as on a laptop:

- the CV decision's two fold runs (the sample, 20 labelled images per class: 100 per fold): one
  after the other with all of torch's threads (the reference, what the decision did before)
  against side by side, one thread each (`pipeline_lib.image.finetuning.side_by_side`);
- a run alone (the refit on all 200 labelled images): each batch in one pass with all threads
  (the reference) against its two halves side by side, one thread each (`Trainer._step_in_halves`).

    .venv/bin/python benchmarks/side_by_side.py [--epochs 4] [--repeats 2]

Each measurement runs in a fresh process; the first epoch of each is a warm-up, not counted.
Prints seconds per epoch (median) and the ratio. Run it alone: the numbers are the point.
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
import time

from _common import ROOT, copy_project
from threads import NEIGHBOURS

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from pipeline_lib.runtime import configure_threads, process_environment
process_environment(); configure_threads(0)
import torch
from pipeline_lib.config import load_params
from pipeline_lib.dataset import load_manifest
from pipeline_lib.image.finetuning import Trainer, side_by_side
from pipeline_lib.image.networks import Images, build_model
from pipeline_lib.paths import Paths
paths = Paths.for_root({project!r}); params = load_params(paths.root)
manifest, _ = load_manifest(paths)
train = manifest[manifest["split"] == "train"]
Trainer.halves = {together}
trainers = []
for part in ((train.iloc[0::2], train.iloc[1::2]) if {folds} else (train,)):
    model, _ = build_model(params, paths)
    trainers.append(Trainer(params, model, Images(part, paths, model.preprocess), torch.device("cpu")))
times = []
for epoch in range(1, {epochs} + 1):
    t = time.perf_counter()
    if {together} and {folds}:
        side_by_side(trainers, epoch, "fold")
    else:
        for trainer in trainers:
            trainer.train_epoch(epoch)
    times.append(time.perf_counter() - t)
print("TIMES", json.dumps(times[1:]))
"""


def epoch_seconds(project, together: bool, epochs: int, folds: bool) -> list[float]:
    code = CHILD.format(root=str(ROOT), project=str(project), epochs=epochs, together=together, folds=folds)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.split("TIMES", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="per run, the first one not counted")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from pipeline_lib.config import load_params
    from pipeline_lib.paths import Paths
    from pipeline_lib.stages import run_stages

    project = copy_project()
    with contextlib.redirect_stderr(io.StringIO()):
        run_stages(load_params(project), Paths.for_root(project), last="train_head")
    for folds, what, columns in ((True, "both fold runs (100 images each)", ("one after the other", "side by side")),
                                 (False, "a run alone (200 images)", ("whole batches", "two halves"))):
        print(f"\n{os.cpu_count()} cores; one epoch of {what}, seconds, median of "
              f"{args.epochs - 1} epochs x {args.repeats} runs")
        print(f"{'neighbour':<32} {columns[0]:>20} {columns[1]:>13} {'ratio':>6}")
        for label, code in {"none (idle)": None, **NEIGHBOURS}.items():
            times = {False: [], True: []}
            for repeat in range(args.repeats):
                neighbour = subprocess.Popen([sys.executable, "-c", code]) if code else None
                try:
                    if neighbour:
                        time.sleep(1.0)
                    for together in ((False, True) if repeat % 2 == 0 else (True, False)):
                        times[together] += epoch_seconds(project, together, args.epochs, folds)
                finally:
                    if neighbour:
                        neighbour.kill()
                        neighbour.wait()
            seq, side = statistics.median(times[False]), statistics.median(times[True])
            print(f"{label:<32} {seq:18.2f} s {side:11.2f} s {seq / side:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
