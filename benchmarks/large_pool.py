"""Issue 25's large pool, end to end: the full Fashion-MNIST training set (60,000 images) as the
unlabelled pool of a project with 20 labels per class, 2,000 test images.

Each step runs in a process of its own, so its seconds and peak RSS are its own:

- ingest of the 60,000 + 2,000 images;
- the raw forward pass (the reference): the backbone on decoded tensors already in memory, on
  ``--forward-items`` pool images, measured twice (before featurize and after advise), each time
  two ways: one batch after the other on every thread, and two batches at a time in lanes of one
  thread (runtime.lanes_map, what featurize and predict do on the CPU); the fastest counts;
- featurize with a cold cache (every pool image embedded and cached), against the raw forward pass;
- warm assembly: featurize again with every vector cached (its feature matrices removed first);
- advise on the pool (learning curve, suspect labels, and its picks: margin, what `auto` takes at
  20 labels per class, then typical);
- ``python -m flows.predict`` on the 60,000 pool images with the registered model, against the raw
  forward pass of that model (loaded from MLflow; two passes where the deployed candidate averages
  the mirror image) on decoded tensors of ``--forward-items`` pool images.

Fine-tuning and synthesis are off (they do not read the pool). Run it alone, not beside tests:

    .venv/bin/python benchmarks/large_pool.py [--per-class 6000] [--work /tmp/large-pool] [--report out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from _common import ROOT, copy_project, full_data_npz, set_params

TARGETS = {"featurize_vs_forward": 0.9, "warm_assembly_s": 10.0, "advise_s": 60.0, "advise_rss_gb": 4.0,
           "predict_vs_forward": 0.9}


def child(code: str, cwd: Path, args: list[str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter: the JSON it prints last (its own seconds and peak RSS in
    GB), with the process's wall seconds (start-up and imports included)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *(args or [])], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"step failed ({proc.returncode}):\n{err[-3000:]}")
    last = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(last[-1]) if last else {}
    result.setdefault("seconds", round(seconds, 2))
    result["process_seconds"] = round(seconds, 2)
    return result


STAGE = """
    import json, resource, sys, time
    from pipeline_lib.runtime import process_environment
    process_environment()
    from pipeline_lib.config import load_params
    from pipeline_lib.paths import Paths
    from pipeline_lib.stages import run_stage
    paths = Paths.for_root(".")
    params = load_params(paths.root)
    started = time.perf_counter()
    for stage in [a for a in sys.argv[1:] if a != "--log"]:
        report = run_stage(stage, params, paths)
    if "--log" in sys.argv:  # what the pipeline flow's last task does: the MLflow run, the registered model
        from pipeline_lib import tracking
        tracking.log_pipeline_run(params, paths)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 2),
                      "rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""

TIMED = """
    def timed(forward, batches, items, device):
        # the reference two ways: one batch after the other with every thread, and two batches at a
        # time in lanes of one thread each (runtime.lanes_map, what featurize and predict do on the
        # CPU); the faster is the reference
        import resource, time
        from pipeline_lib.runtime import lanes_map
        started = time.perf_counter()
        for batch in batches:
            forward(batch)
        plain = time.perf_counter() - started
        started = time.perf_counter()
        for _ in lanes_map(forward, batches, device):
            pass
        lanes = time.perf_counter() - started
        return {"seconds": round(min(plain, lanes), 2), "items": items,
                "items_per_s": round(items / min(plain, lanes), 1),
                "plain_items_per_s": round(items / plain, 1), "lanes_items_per_s": round(items / lanes, 1),
                "rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
"""

FORWARD = TIMED + """
    import json, resource, sys, time
    import torch
    from pipeline_lib.runtime import process_environment, use
    process_environment()
    from pipeline_lib.config import load_params
    from pipeline_lib.dataset import load_manifest
    from pipeline_lib.image.backbones import chosen_backbone, load_batch
    from pipeline_lib.paths import Paths
    paths = Paths.for_root(".")
    params = load_params(paths.root)
    device = use(params.runtime)
    backbone = chosen_backbone(params, paths).to(device, params.runtime.precision)
    manifest, _ = load_manifest(paths)
    files = [paths.resolve(p) for p in manifest.loc[manifest["split"] == "unused", "path"][:int(sys.argv[1])]]
    batches = [load_batch(files[i:i + 64], backbone.preprocess) for i in range(0, len(files), 64)]
    backbone(batches[0])  # warm-up
    print(json.dumps(timed(lambda batch: backbone(batch.to(device)), batches, len(files), device)))
"""

MODEL_FORWARD = TIMED + """
    import json, resource, sys, time
    import torch
    from pipeline_lib.runtime import process_environment, use
    process_environment()
    from pipeline_lib.config import load_params
    from pipeline_lib.dataset import load_manifest
    from pipeline_lib.image.backbones import Preprocess, load_batch
    from pipeline_lib.paths import Paths
    from pipeline_lib.predict import load_registered
    paths = Paths.for_root(".")
    params = load_params(paths.root)
    use(params.runtime)
    loaded = load_registered(f"models:/{params.mlflow.model_name}@champion", paths.mlflow_uri)
    manifest, _ = load_manifest(paths)
    files = [paths.resolve(p) for p in manifest.loc[manifest["split"] == "unused", "path"][:int(sys.argv[1])]]
    preprocess = Preprocess(loaded.resolution)
    batches = [load_batch(files[i:i + 64], preprocess) for i in range(0, len(files), 64)]
    with torch.no_grad():
        loaded.model(batches[0])  # warm-up

    def forward(batch):
        with torch.no_grad():
            return loaded.model(batch)

    print(json.dumps(timed(forward, batches, len(files), "cpu")))
"""

PREDICT = """
    import json, resource, runpy, sys
    sys.argv = ["flows.predict", *sys.argv[1:]]
    try:
        runpy.run_module("flows.predict", run_name="__main__")
    except SystemExit as exc:
        if exc.code:
            raise
    print(json.dumps({"rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def build_project(work: Path, per_class: int, seed: int) -> Path:
    root = copy_project(work / "project")
    data = full_data_npz(seed, work, pool_per_class=per_class, test_per_class=200)
    set_params(root, data={"source": "sample", "path": str(data), "shots_per_class": 20, "sample_test_per_class": 200},
               finetune={"enabled": False}, synthetic={"generator": "none"}, augment={"copies": 0},
               featurize={"cache_dir": str(work / "feature-cache")})
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=6000, help="pool images per class (6000: all 60,000)")
    parser.add_argument("--forward-items", type=int, default=6000, help="pool images in the raw forward pass")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/large-pool"))
    parser.add_argument("--report", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    root = build_project(args.work, args.per_class, args.seed)
    figures: dict[str, dict] = {}

    def step(name: str, code: str, *argv: str) -> dict:
        print(f"{name} ...", flush=True)
        figures[name] = child(code, root, list(argv))
        print(f"  {figures[name]}", flush=True)
        return figures[name]

    step("ingest", STAGE, "ingest")
    pool = sum(1 for _ in (root / "data" / "prepared").rglob("*.png"))
    step("raw_forward", FORWARD, str(args.forward_items))
    step("featurize_cold", STAGE, "featurize")
    featurized = json.loads((root / "reports" / "featurize.json").read_text())
    computed = int(featurized.get("computed") or featurized.get("n_computed") or 0)
    for npz in (root / "data" / "features").glob("*.npz"):
        npz.unlink()
    step("featurize_warm", STAGE, "featurize")
    step("train_head_evaluate", STAGE, "train_head", "evaluate", "--log")
    step("advise", STAGE, "advise")  # auto: margin picks at 20 labels per class
    set_params(root, advise={"strategy": "typical"})
    step("advise_typical", STAGE, "advise")
    set_params(root, advise={"strategy": "auto"})
    manifest = root / "pool.csv"
    import pandas as pd

    from pipeline_lib.dataset import read_manifest

    frame = read_manifest(root / "data" / "prepared" / "manifest.parquet")
    unused = frame[frame["split"] == "unused"]
    pd.DataFrame({"path": [str(root / p) for p in unused["path"]]}).to_csv(manifest, index=False)
    step("model_forward", MODEL_FORWARD, str(args.forward_items))
    step("raw_forward_again", FORWARD, str(args.forward_items))
    step("predict", PREDICT, str(manifest), "--out", str(args.work / "predictions.parquet"))
    predicted = json.loads((args.work / "predictions.report.json").read_text())

    # the reference is the faster of two measurements (before featurize, after advise): a busy
    # neighbour during one of them would otherwise flatter the ratios
    forward = max(figures["raw_forward"]["items_per_s"], figures["raw_forward_again"]["items_per_s"])
    cold = figures["featurize_cold"]
    summary = {
        "pool_images": len(unused), "prepared_images": pool, "computed_vectors": computed,
        "ingest_s": figures["ingest"]["seconds"], "ingest_rss_gb": figures["ingest"]["rss_gb"],
        "raw_forward_items_per_s": forward,
        "featurize_cold_s": cold["seconds"], "featurize_cold_items_per_s": round(computed / cold["seconds"], 1),
        "featurize_vs_forward": round(computed / cold["seconds"] / forward, 3), "featurize_rss_gb": cold["rss_gb"],
        "warm_assembly_s": figures["featurize_warm"]["seconds"], "warm_rss_gb": figures["featurize_warm"]["rss_gb"],
        "advise_s": max(figures["advise"]["seconds"], figures["advise_typical"]["seconds"]),
        "advise_rss_gb": max(figures["advise"]["rss_gb"], figures["advise_typical"]["rss_gb"]),
        "advise_margin_s": figures["advise"]["seconds"], "advise_typical_s": figures["advise_typical"]["seconds"],
        "predict_s": predicted["seconds"], "predict_items_per_s": predicted["items_per_second"],
        "model_forward_items_per_s": figures["model_forward"]["items_per_s"],
        "predict_vs_forward": round(predicted["items_per_second"] / figures["model_forward"]["items_per_s"], 3),
        "predict_process_s": figures["predict"]["process_seconds"], "predict_rss_gb": figures["predict"]["rss_gb"],
    }
    print("\nLarge pool (Fashion-MNIST, 20 labels per class):")
    for key, value in summary.items():
        target = TARGETS.get(key)
        ok = "" if target is None else ("  ok" if (value >= target if "vs" in key else value <= target)
                                         else "  MISSED") + f" (target {'>=' if 'vs' in key else '<='} {target})"
        print(f"  {key:28s} {value}{ok}")
    if args.report:
        args.report.write_text(json.dumps({"summary": summary, "steps": figures}, indent=2))


if __name__ == "__main__":
    main()
