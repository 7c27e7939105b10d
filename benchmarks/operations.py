"""Operations figures (issue 5), on a project copy with the default params, after one full run:

  retrain   `python -m flows.retrain run` when nothing changed, vs the start-up of a trivial Prefect
            flow in a fresh process (the reference, measured here); and the same no-change run in a
            warm process (a served deployment). Target: <= 5 s beyond Prefect start-up.
  predict   batch prediction of the sample's 1,000 test PNGs with the champion loaded from MLflow
            (decode, validate, resize, forward, top-k rows) vs the raw forward pass of the same
            model over the same images already decoded and resized. Target: >= 0.8x.
  recovery  a stage killed (SIGKILL) half-way, then re-run: featurize (cold feature cache) and
            finetune (per-epoch checkpoints), vs the uninterrupted stage run. Every command runs
            against one local Prefect server, as `make run` does.

    .venv/bin/python benchmarks/operations.py [--part retrain predict recovery]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import copy_project

PY = sys.executable
TRIVIAL = "from prefect import flow\n@flow\ndef noop():\n    return 1\nnoop()\n"


def env_with(api_url: str) -> dict:
    env = {**os.environ, "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": api_url}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def killed_after(cmd: list[str], cwd: Path, env: dict, seconds: float) -> None:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=seconds)
        raise SystemExit(f"{cmd} finished before the kill at {seconds:.0f} s")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def retrain_part(root: Path, env: dict) -> None:
    trivial = [timed([PY, "-c", TRIVIAL], root, env) for _ in range(3)]
    skipped = [timed([PY, "-m", "flows.retrain", "run"], root, env) for _ in range(3)]
    warm_code = ("import sys, time; sys.path.insert(0, '.'); from flows.retrain import retrain; retrain(); "
                 "t = time.perf_counter(); r = retrain(); print(r['status'], time.perf_counter() - t)")
    out = subprocess.run([PY, "-c", warm_code], cwd=root, env=env, capture_output=True, text=True, check=True).stdout
    status, warm = out.split()[-2], float(out.split()[-1])
    t, s = statistics.median(trivial), statistics.median(skipped)
    print(f"retrain, nothing changed (median of 3 fresh processes): {s:.1f} s; trivial Prefect flow process "
          f"(reference): {t:.1f} s; beyond start-up: {s - t:.1f} s (target <= 5 s); ratio {s / t:.2f}x")
    print(f"retrain, nothing changed, warm process (served deployment): {warm:.2f} s ({status})")


def predict_part(root: Path) -> None:
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(root))
    from pipeline_lib.config import load_params
    from pipeline_lib.image.backbones import Preprocess
    from pipeline_lib.image.deploy import list_inputs, predict_files
    from pipeline_lib.image.fashion_mnist import load_sample
    from pipeline_lib.paths import Paths
    from pipeline_lib.predict import load_registered

    paths = Paths.for_root(root)
    folder = root / "data" / "new_images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(load_sample()["x_test"]):
        Image.fromarray(x).save(folder / f"img_{i:04d}.png")
    loaded = load_registered(f"models:/{load_params(root).mlflow.model_name}@champion", paths.mlflow_uri)
    files = list_inputs(folder)
    preprocess = Preprocess(loaded.resolution)
    tensors = [preprocess.resize(torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1)
                                 .float().div_(255.0)) for f in files]
    batches = [torch.stack(tensors[i:i + 64]) for i in range(0, len(tensors), 64)]
    predict_files(loaded, files[:64])  # warm-up, both paths
    with torch.no_grad():
        loaded.model(batches[0])
    raw_s, pred_s = [], []
    for _ in range(3):
        started = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                loaded.model(batch)
        raw_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        frame, skipped = predict_files(loaded, files)
        pred_s.append(time.perf_counter() - started)
    raw, pred = len(files) / statistics.median(raw_s), len(frame) / statistics.median(pred_s)
    print(f"predict: {pred:.0f} img/s over {len(files)} PNGs (batch 64, {torch.get_num_threads()} threads); "
          f"raw forward pass of the same model on decoded tensors: {raw:.0f} img/s; "
          f"ratio {pred / raw:.2f}x (target >= 0.8x)")


def recovery_part(root: Path, env: dict) -> None:
    cache = root / ".cache" / "features"
    for stage, reset in (("featurize", lambda: shutil.rmtree(cache, ignore_errors=True)), ("finetune", lambda: None)):
        cmd = [PY, "-m", f"flows.{stage}"]
        reset()
        whole = timed(cmd, root, env)
        reset()
        kill_at = whole / 2
        killed_after(cmd, root, env, kill_at)
        rerun = timed(cmd, root, env)
        print(f"recovery, {stage}: uninterrupted {whole:.1f} s; killed at {kill_at:.1f} s, re-run took {rerun:.1f} s "
              f"(from scratch it would take {whole:.1f} s; kill + re-run = {(kill_at + rerun) / whole:.2f}x the "
              "uninterrupted run)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", nargs="+", default=["retrain", "predict", "recovery"],
                        choices=["retrain", "predict", "recovery"])
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tasks.prefect_server import start_server, stop_server

    root = copy_project()
    server, api_url, _ = start_server()
    try:
        env = env_with(api_url)
        started = time.perf_counter()
        timed(["dvc", "repro"], root, env)
        print(f"(first full dvc repro, default params: {time.perf_counter() - started:.0f} s)", flush=True)
        if "retrain" in args.part:
            retrain_part(root, env)
        if "predict" in args.part:
            predict_part(root)
        if "recovery" in args.part:
            recovery_part(root, env)
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
