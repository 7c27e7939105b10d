"""Labelling loop through a real Label Studio server: advise's picks against random picks.

Fashion-MNIST full data (Debian's dataset-fashion-mnist): per seed, k labelled images per class, a
pool of 2,000 unlabelled images (labels hidden) and 2,000 test images. Each arm runs the commands a
user types, in its own copy of the project: `dvc repro`, then rounds of `python -m flows.label push`,
an oracle labeller answering every task through Label Studio's API with the hidden true label,
`python -m flows.label pull` and `dvc repro`. The loop arm pushes advise's picks (advise.strategy:
auto); the random arm the same number drawn at random (advise.strategy: random). Reported: test
macro-F1 after each round for both, the wall time of push, pull and retrain, and the learning-curve
forecast made before each round against the CV score measured after it.

    .venv/bin/python benchmarks/labelling_loop.py                      # 3 seeds x 3 rounds x 20 labels
    .venv/bin/python benchmarks/labelling_loop.py --seeds 1 --rounds 1 # a quick look
Fine-tuning is off (finetune.enabled: false) to keep a round at about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from _common import copy_project, full_data_npz, mean_std, set_params

from tests import label_studio_server  # noqa: E402

ARMS = {"loop": "auto", "random": "random"}


def run(args: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc.stdout


def oracle(server, project_id: int, truth: dict[str, str]) -> int:
    """Answer every unanswered task of the project with the item's hidden true label."""
    headers = {"Authorization": f"Token {server.token}"}
    tasks = requests.get(f"{server.url}/api/projects/{project_id}/export", headers=headers, timeout=120,
                         params={"exportType": "JSON", "download_all_tasks": "true"}).json()
    answered = 0
    for task in tasks:
        if task.get("annotations"):
            continue
        label = truth[task["data"]["item_id"]]
        requests.post(f"{server.url}/api/tasks/{task['id']}/annotations", headers=headers, timeout=60, json={
            "result": [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [label]}}]}
                      ).raise_for_status()
        answered += 1
    return answered


def arm(name: str, seed: int, args, work: Path, server, env: dict) -> dict:
    root = copy_project(work / f"{name}-seed{seed}" / "project")
    npz = full_data_npz(seed, work, pool_per_class=args.shots + args.pool // 10, test_per_class=args.test // 10)
    set_params(root, data={"source": "sample", "path": str(npz), "shots_per_class": args.shots,
                           "sample_test_per_class": args.test // 10},
               finetune={"enabled": False}, featurize={"cache_dir": str(work / "feature-cache")},
               advise={"label_next": args.batch, "strategy": ARMS[name]},
               label={"url": server.url, "document_root": str(work), "project": f"{name} seed {seed}"})
    text = (root / "params.yaml").read_text().replace("seed: 42", f"seed: {seed}", 1)
    (root / "params.yaml").write_text(text)
    run(["git", "commit", "-qam", "benchmark params"], root, env)
    seconds, _ = run(["dvc", "repro"], root, env)
    rounds = [{"round": 0, "macro_f1": _metric(root), "retrain_s": round(seconds, 1)}]
    from pipeline_lib.dataset import read_manifest

    manifest = read_manifest(root / "data/prepared/manifest.parquet")
    truth = dict(zip(manifest["item_id"], manifest["label"]))  # the pool's hidden labels
    for r in range(1, args.rounds + 1):
        push_s, out = run(["python", "-m", "flows.label", "push"], root, env)
        project_id = int(out.split("/projects/")[1].split("/")[0])
        answered = oracle(server, project_id, truth)
        pull_s, _ = run(["python", "-m", "flows.label", "pull"], root, env)
        retrain_s, _ = run(["dvc", "repro"], root, env)
        labelled = json.loads((root / "reports/mlflow_run.json").read_text()).get("labelling_round") or {}
        forecast = labelled.get("forecast") or {}
        rounds.append({"round": r, "answered": answered, "macro_f1": _metric(root), "push_s": round(push_s, 1),
                       "pull_s": round(pull_s, 1), "retrain_s": round(retrain_s, 1),
                       "forecast_cv": forecast.get("predicted"), "forecast_low": forecast.get("low"),
                       "forecast_high": forecast.get("high"), "cv_before": labelled.get("cv_before"),
                       "cv_after": labelled.get("cv_after")})
        print(f"  {name} seed {seed} round {r}: macro-F1 {rounds[-1]['macro_f1']:.4f} (push {push_s:.0f} s, "
              f"pull {pull_s:.0f} s, retrain {retrain_s:.0f} s; forecast {forecast.get('predicted')}, "
              f"measured CV {labelled.get('cv_after')})", flush=True)
    return {"arm": name, "seed": seed, "rounds": rounds}


def _metric(root: Path) -> float:
    return float(json.loads((root / "reports/metrics.json").read_text())["macro_f1"])


def report(cells: list[dict], rounds: int) -> None:
    print("\nTest macro-F1 (%, mean ± std over seeds) after each round:")
    print("round | labels/class | loop (advise) | random | loop - random (per seed)")
    for r in range(rounds + 1):
        seeds = {c["seed"] for c in cells if c["arm"] == "loop"} & {c["seed"] for c in cells if c["arm"] == "random"}
        loop = [c["rounds"][r]["macro_f1"] for c in cells if c["arm"] == "loop" and c["seed"] in seeds]
        rand = [c["rounds"][r]["macro_f1"] for c in cells if c["arm"] == "random" and c["seed"] in seeds]
        diffs = " ".join(f"{(a - b) * 100:+.1f}" for a, b in zip(loop, rand))
        print(f"{r:5d} | {cells[0]['shots'] + r * cells[0]['batch'] / 10:12.0f} | {mean_std(loop)} | {mean_std(rand)} | {diffs}")
    after = [x for c in cells for x in c["rounds"][1:]]
    for key in ("push_s", "pull_s", "retrain_s"):
        values = [x[key] for x in after]
        print(f"{key}: median {sorted(values)[len(values) // 2]:.1f} s (max {max(values):.1f})")
    pairs = [(x["forecast_cv"], x["cv_after"], x["forecast_low"], x["forecast_high"]) for x in after
             if x.get("forecast_cv") is not None and x.get("cv_after") is not None]
    if pairs:
        errors = [m - f for f, m, _, _ in pairs]
        inside = sum(lo <= m <= hi for _, m, lo, hi in pairs)
        print(f"forecast vs measured CV macro-F1: mean error (measured - forecast) {sum(errors) / len(errors):+.3f}, "
              f"{inside} of {len(pairs)} inside the forecast's interval")
        for arm_name in ARMS:
            arm_errors = [x["cv_after"] - x["forecast_cv"] for c in cells if c["arm"] == arm_name for x in c["rounds"][1:]
                          if x.get("forecast_cv") is not None and x.get("cv_after") is not None]
            if arm_errors:
                print(f"  {arm_name}: mean error {sum(arm_errors) / len(arm_errors):+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20, help="labels per round")
    parser.add_argument("--shots", type=int, default=10, help="labelled images per class at the start")
    parser.add_argument("--pool", type=int, default=2000, help="unlabelled images (a multiple of 10)")
    parser.add_argument("--test", type=int, default=2000, help="test images (a multiple of 10)")
    parser.add_argument("--out", type=Path, default=None, help="append each arm's rounds to this JSONL file")
    parser.add_argument("--report", type=Path, default=None, help="only print the report of a JSONL file (--out)")
    args = parser.parse_args()
    if args.report:
        cells = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
        return report(cells, min(len(c["rounds"]) for c in cells) - 1)
    missing = label_studio_server.available()
    if missing:
        sys.exit(f"error: {missing}")
    work = Path(tempfile.mkdtemp(prefix="labelling-loop-"))
    server = label_studio_server.start(work / "label-studio", work)
    env = {**os.environ, "LABEL_STUDIO_API_KEY": server.token, "MLFLOW_TRACKING_URI": "",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cells = []
    try:
        for seed in range(args.seeds):
            for name in ARMS:
                cell = {**arm(name, seed, args, work, server, env), "shots": args.shots, "batch": args.batch}
                cells.append(cell)
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps(cell) + "\n")
    finally:
        server.stop()
    report(cells, args.rounds)
    print(f"(work folder {work}; Label Studio {label_studio_server.BINARY.parent.parent.name})")


if __name__ == "__main__":
    main()
