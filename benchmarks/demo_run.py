"""The default runs, timed as a user runs them: `python -m flows.pipeline` (what `make run` and
scheduled runs do: the DAG in one process; ``--command repro``: `python -m tasks.prefect_server dvc
repro`, what `make repro` does, a process per stage) in a fresh copy of the project with a cold
feature cache, over several seeds:

- ``--data images``: params.yaml as shipped (the embedded Fashion-MNIST sample), only the seed set;
- ``--data text``: the embedded drug reviews (8 conditions), ``--shots`` labelled reviews per class.

Printed: the wall time, every stage's seconds (its report's wall_seconds), the fine-tuning decision
and refit seconds, and test macro-F1 / accuracy of the deployed model and of each candidate
(the head; finetune when it was kept). The install is not counted (`make install` beforehand).

    .venv/bin/python benchmarks/demo_run.py --data images [--seeds 3]
    .venv/bin/python benchmarks/demo_run.py --data text [--shots 8] [--seeds 3] [--set KEY=VALUE ...]
        # e.g. --set finetune.text.pairs=sampled finetune.text.epochs=1 finetune.text.lr=0.00002
        #      finetune.text.batch_size=16 finetune.text.pairs_per_example=20   (SetFit's pairs, the old default)

Run it alone: it is CPU-bound.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _common import apply_overrides, copy_project

from pipeline_lib.stages import STAGES  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ['PATH']}"}
for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
    ENV.pop(name, None)
SAMPLE = "pipeline_lib/sample_data/drug_reviews_condition.csv"


COMMANDS = {"run": [PY, "-m", "flows.pipeline"], "repro": [PY, "-m", "tasks.prefect_server", "dvc", "repro"]}


def one(data: str, shots: int, seed: int, overrides: list[str], command: str = "run") -> dict:
    root = copy_project()
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["seed"] = seed
    if data == "text":
        params["data"].update(source="manifest", path=SAMPLE, shots_per_class=shots)
    (root / "params.yaml").write_text(yaml.safe_dump(apply_overrides(params, overrides), sort_keys=False))
    started = time.perf_counter()
    proc = subprocess.run(COMMANDS[command], cwd=root, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(COMMANDS[command][2:])} failed in {root}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    reports = {s: json.loads((root / "reports" / f"{s}.json").read_text()) for s in STAGES
               if (root / "reports" / f"{s}.json").exists()}
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    ft = reports.get("finetune", {})
    return {"data": data, "shots": params["data"]["shots_per_class"], "seed": seed, "overrides": overrides,
            "wall_s": round(wall, 1),
            "stage_s": {s: r.get("wall_seconds") for s, r in reports.items()},
            "kept": ft.get("kept"), "gain": ft.get("gain"), "gain_se": ft.get("gain_se"),
            "decide_s": ft.get("decide_seconds"), "refit_s": ft.get("refit_seconds"), "pairs": ft.get("pairs"),
            "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
            "models": {name: {k: m.get(f"test_{k}") for k in ("macro_f1", "accuracy")}
                       for name, m in metrics.get("models", {}).items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["images", "text"], required=True)
    parser.add_argument("--shots", type=int, default=8, help="text: labelled reviews per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--command", choices=sorted(COMMANDS), default="run",
                        help="run: make run (flows.pipeline, one process); repro: make repro (dvc repro)")
    parser.add_argument("--out", default=None, help="append each run's JSON line here too")
    args = parser.parse_args()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        row = one(args.data, args.shots, seed, args.set, args.command)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        rows.append(row)
    import numpy as np

    def ms(values) -> str:
        values = np.asarray([v for v in values if v is not None], float)
        return f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "-"

    what = f"drug reviews (condition), k = {args.shots}" if args.data == "text" else "images (params.yaml as shipped)"
    print(f"\n{what}, {len(rows)} seeds; overrides: {' '.join(args.set) or 'none'}")
    print(f"  wall ({' '.join(COMMANDS[args.command][2:])}): {ms([r['wall_s'] for r in rows])} s")
    for stage in STAGES:
        print(f"    {stage:<11} {ms([r['stage_s'].get(stage) for r in rows])} s")
    print(f"  fine-tuning decision {ms([r['decide_s'] for r in rows])} s, refit {ms([r['refit_s'] for r in rows])} s, "
          f"kept {sum(bool(r['kept']) for r in rows)} of {len(rows)}")
    print(f"  deployed macro-F1 {ms([r['macro_f1'] for r in rows])}, accuracy {ms([r['accuracy'] for r in rows])}")
    for name in ("head", "finetune"):
        print(f"  {name:<8} macro-F1 {ms([r['models'].get(name, {}).get('macro_f1') for r in rows])}")


if __name__ == "__main__":
    main()
