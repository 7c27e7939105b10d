"""Wall time of the default `make run` (dvc repro, each stage a Prefect flow) and how much of it is
orchestration overhead, plus the no-op and head-only re-run times.

Reference (pure compute): every stage function of pipeline_lib.stages called in one plain Python
process, no Prefect, no DVC, no MLflow. Measured, each on a cold feature cache in a fresh copy:
  A. `python -m tasks.prefect_server dvc repro`   (what `make run` does: one local Prefect server)
  B. `dvc repro` with a temporary Prefect server per stage process (Prefect's default)
  C. `python -m flows.pipeline`                   (one process, one Prefect start, DVC API commits)
  D. the pipeline flow called repeatedly in one long-lived process, as a served deployment does
Overhead = (wall - compute) / wall. Targets: demo <= 180 s, overhead <= 10 %, no-op <= 3 s,
head-only re-run <= 10 s.

    .venv/bin/python benchmarks/pipeline_overhead.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _common import copy_project, set_params

PY = sys.executable
ENV = {**os.environ, "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ['PATH']}"}
ENV.pop("PREFECT_API_URL", None)
ENV.pop("MLFLOW_TRACKING_URI", None)


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started, proc.stdout + proc.stderr


PLAIN = """
import time; t0 = time.perf_counter()
from pipeline_lib.stages import STAGES, stage_module
from pipeline_lib.config import load_params
from pipeline_lib.paths import Paths
paths = Paths.for_root("."); params = load_params()
modules = [stage_module(name) for name in STAGES]
t1 = time.perf_counter()
for stage in modules:
    stage.run(params, paths)
t2 = time.perf_counter()
from pipeline_lib import tracking
tracking.log_pipeline_run(params, paths)
t3 = time.perf_counter()
print(f"COMPUTE {t2 - t0:.2f} IMPORTS {t1 - t0:.2f} MLFLOW {t3 - t2:.2f}")
"""


WARM = """
import sys, time, yaml
sys.path.insert(0, ".")
from flows.pipeline import pipeline
t = time.perf_counter(); pipeline(); cold = time.perf_counter() - t
p = yaml.safe_load(open("params.yaml")); p["train_head"]["lr"] = 0.002
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
t = time.perf_counter(); r = pipeline(); head = time.perf_counter() - t
assert r["ran"] == ["train_head", "evaluate"], r
t = time.perf_counter(); r = pipeline(); noop = time.perf_counter() - t
assert r["ran"] == [], r
print(f"WARM process (served deployment): full run {cold:.1f} s, then head-only re-run {head:.1f} s "
      f"(target <= 10 s), no-op {noop:.1f} s")
"""


def main() -> None:
    plain_root = copy_project()
    _, out = timed([PY, "-c", PLAIN], plain_root)
    line = next(line for line in out.splitlines() if line.startswith("COMPUTE"))
    fields = dict(zip(line.split()[0::2], map(float, line.split()[1::2])))
    compute, mlflow_s = fields["COMPUTE"], fields["MLFLOW"]
    print(f"pure compute, one process, no orchestration: {compute:6.1f} s  (of which imports {fields['IMPORTS']:.1f} s)")
    print(f"MLflow logging of one run (params, metrics, artifacts, model): {mlflow_s:6.1f} s")

    results = {}
    for label, cmd in (("A make run: dvc repro + one local Prefect server", [PY, "-m", "tasks.prefect_server", "dvc", "repro"]),
                       ("B dvc repro, temporary Prefect server per stage", ["dvc", "repro"]),
                       ("C python -m flows.pipeline (one process)", [PY, "-m", "flows.pipeline"])):
        root = copy_project()
        wall, _ = timed(cmd, root)
        results[label] = (wall, root)
        overhead = (wall - compute) / wall
        print(f"{label:52s} {wall:6.1f} s   overhead {wall - compute:5.1f} s = {overhead:4.0%}"
              f"   (target: <= 180 s, <= 10 %)", flush=True)

    wall_a, root = results["A make run: dvc repro + one local Prefect server"]
    noop, out = timed(["dvc", "repro"], root)
    assert "Running stage" not in out
    print(f"no-op dvc repro: {noop:.2f} s (target <= 3 s)")
    set_params(root, train_head={"lr": 0.002})
    head_only, out = timed([PY, "-m", "tasks.prefect_server", "dvc", "repro"], root)
    assert "Running stage 'featurize'" not in out and "Running stage 'train_head'" in out
    print(f"head-only re-run (train_head + evaluate, with MLflow logging): {head_only:.1f} s (target <= 10 s)")
    set_params(root, train_head={"lr": 0.003})
    head_only_c, out = timed([PY, "-m", "flows.pipeline"], root)
    print(f"head-only re-run via python -m flows.pipeline: {head_only_c:.1f} s")
    set_params(root, train_head={"lr": 0.004}, mlflow={"log_model": False})
    head_nolog, _ = timed([PY, "-m", "flows.pipeline"], root)
    print(f"  ... with mlflow.log_model: false: {head_nolog:.1f} s")

    # D: a long-lived process (as a served Prefect deployment runs): imports and Prefect are warm
    root = copy_project()
    _, out = timed([PY, "-m", "tasks.prefect_server", PY, "-c", WARM], root)
    print(next(line for line in out.splitlines() if line.startswith("WARM")))


if __name__ == "__main__":
    main()
