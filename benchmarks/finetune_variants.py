"""Fine-tuning variants against the shipped defaults, on the same seeds and images: how the finetune
defaults were chosen and what did not help.

    .venv/bin/python benchmarks/finetune_variants.py [--seeds 3] [--shots 20] [--data sample|full] \
        finetune.ema=0.99 finetune.epochs=60,finetune.patience=20 augment.policy.erase_p=0.5 ...

Each variant is a comma-separated list of KEY=VALUE overrides (as `dvc exp run -S` takes them);
the defaults ("base") always run first as the reference. Every cell goes through the pipeline's own
stages (pipeline_lib.stages.STAGES). Prints test accuracy of the
fine-tuned model and of what evaluate chooses (mean ± std over seeds), the difference to the
defaults, fine-tuning seconds per run and the best epoch per seed (0 = the probe was kept).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io

import numpy as np
from _common import apply_overrides, benchmark_params, copy_project, mean_std

from pipeline_lib.config import load_params, parse_params
from pipeline_lib.paths import Paths
from pipeline_lib.stages import evaluate, finetune, run_stages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="*", help="KEY=VALUE[,KEY=VALUE...] per variant")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--data", choices=["sample", "full"], default="sample")
    args = parser.parse_args()
    variants = [[], *[v.split(",") for v in args.variants]]
    root = copy_project()
    paths = Paths.for_root(root)
    defaults = load_params(root).model_dump()
    cells = {i: [] for i in range(len(variants))}
    for seed in range(args.seeds):
        for i, sets in enumerate(variants):
            raw = benchmark_params(apply_overrides(copy.deepcopy(defaults), sets), seed, args.shots, args.data, root)
            params = parse_params(raw)
            with contextlib.redirect_stderr(io.StringIO()):
                run_stages(params, paths, last="train_head")
                report = finetune.run(params, paths)
            metrics = evaluate.run(params, paths)
            cells[i].append((metrics["models"].get("finetune", {}).get("test_accuracy", float("nan")), metrics["accuracy"],
                             report["train_seconds"], report["best_epoch"]))
            print(f"seed {seed} {' '.join(sets) or 'defaults':60s} finetune {cells[i][-1][0]:.3f} "
                  f"chosen {cells[i][-1][1]:.3f} ({cells[i][-1][2]:.0f} s, best epoch {cells[i][-1][3]})", flush=True)
    base = np.mean([c[0] for c in cells[0]])
    print(f"\n{args.data} data, {args.shots} shots, {args.seeds} seeds; test accuracy %, mean ± std")
    print(f"{'variant':60s} {'finetune':>12} {'vs defaults':>11} {'chosen':>12} {'s/run':>6}  best epochs")
    for i, sets in enumerate(variants):
        ft = [c[0] for c in cells[i]]
        print(f"{' '.join(sets) or 'defaults (reference)':60s} {mean_std(ft):>12} {100 * (np.mean(ft) - base):+10.1f} "
              f"{mean_std([c[1] for c in cells[i]]):>12} {np.mean([c[2] for c in cells[i]]):6.0f}  "
              f"{[c[3] for c in cells[i]]}")


if __name__ == "__main__":
    main()
