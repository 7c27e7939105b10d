"""SIGKILL in the middle of synthesize, featurize and finetune while `dvc repro finetune` runs (a real
process group killed), then `dvc repro finetune` again: it completes, resumes what can be resumed,
leaves no truncated cache shard and no temporary, and its outputs match a run that was never
interrupted (the same stages run in this process, with the same one torch thread)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline_lib.config import load_params
from pipeline_lib.dataset import AUGMENTED
from pipeline_lib.features import load_features
from pipeline_lib.paths import Paths
from pipeline_lib.stages import run_stages
from tests.helpers import copy_project, run_cmd, set_params

pytestmark = pytest.mark.e2e

TINY = dict(data={"shots_per_class": 5, "sample_test_per_class": 10, "val_fraction": 0.1},
            selection={"cv_below": 0},  # holdout: finetune always writes a model (CV-mode resume: test_selection)
            augment={"copies": 2}, backbone={"resolution": 64},
            featurize={"batch_size": 4, "cache_shard_items": 4}, runtime={"num_threads": 1},
            synthetic={"generator": "ddpm", "per_class": 2,
                       "ddpm": {"resolution": 16, "channels": [8, 16], "train_steps": 200, "batch_size": 8,
                                "sample_steps": 2, "checkpoint_every": 10}},
            finetune={"epochs": 4, "patience": 4, "batch_size": 16, "unfreeze_blocks": 1},
            evaluate={"bootstrap": 0})


def _project(tmp_path_factory, name):
    root = copy_project(tmp_path_factory.mktemp(name) / "project")
    set_params(root, **TINY)
    run_cmd(["git", "commit", "-qam", "tiny params"], root)
    return root


def _locked(root) -> set:
    lock = root / "dvc.lock"
    return set(yaml.safe_load(lock.read_text())["stages"]) if lock.exists() else set()


def _repro_killed_when(root, env, condition, timeout=300) -> None:
    """Run `dvc repro` and SIGKILL its whole process group as soon as ``condition()`` holds."""
    full_env = {**os.environ, **env, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(["dvc", "repro", "finetune"], cwd=root, env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not condition():
        time.sleep(0.02)
    assert proc.poll() is None, "dvc repro ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_api):
    env = {"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": ""}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    reference = Paths.for_root(_project(tmp_path_factory, "uninterrupted"))
    threads = torch.get_num_threads()
    try:
        params = load_params(reference.root)
        run_stages(params, reference, last="finetune")
    finally:
        torch.set_num_threads(threads)
    killed = _project(tmp_path_factory, "killed")
    cache = killed / ".cache"
    _repro_killed_when(killed, env, lambda: any(cache.glob("ddpm/*.partial.pt")))
    assert "synthesize" not in _locked(killed)
    _repro_killed_when(killed, env, lambda: sum(1 for _ in cache.glob("features/*/shards/*.npz")) >= 3)
    assert "synthesize" in _locked(killed) and "featurize" not in _locked(killed)
    _repro_killed_when(killed, env, lambda: any(cache.glob("checkpoints/finetune-*.pt")))
    assert "featurize" in _locked(killed) and "finetune" not in _locked(killed)
    started = time.monotonic()
    run_cmd(["dvc", "repro", "finetune"], killed, env)
    return reference, Paths.for_root(killed), time.monotonic() - started


def _report(paths, name):
    return json.loads((paths.reports_dir / f"{name}.json").read_text())


def test_killed_synthesize_resumes_its_ddpm_and_generates_the_same_images(runs):
    reference, killed, _ = runs
    assert _report(killed, "synthesize")["ddpm_resumed_at_step"] > 0
    assert _report(reference, "synthesize")["ddpm_resumed_at_step"] == 0
    a, b = pd.read_parquet(reference.synthetic_manifest), pd.read_parquet(killed.synthetic_manifest)
    pd.testing.assert_frame_equal(a, b)  # same model hash, seeds and image content hashes
    leftovers = [p for p in killed.root.rglob(".*") if p.suffix in (".tmp", ".staging", ".old")]
    assert not leftovers and not list(killed.root.glob(".cache/ddpm/*.partial.pt"))


def test_killed_featurize_leaves_only_whole_cache_entries_and_the_same_features(runs):
    reference, killed, _ = runs
    assert _report(killed, "featurize")["cache_hits"] > 0  # the killed run's vectors were reused
    shards = list((killed.root / ".cache/features").rglob("*.npz"))
    assert shards and {np.load(e)["vectors"].shape[1:] for e in shards} == {(160,)}  # whole shards only
    assert not list((killed.root / ".cache/features").glob("*/.tmp/*"))  # the killed writer's temporaries swept
    for split in ("train", "val", "test", "synthetic", AUGMENTED):
        Xa, ya, ida = load_features(reference, split)
        Xb, yb, idb = load_features(killed, split)
        np.testing.assert_array_equal(ida, idb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_allclose(Xa, Xb, atol=1e-5)


def test_killed_finetune_resumes_and_the_pipeline_ends_with_the_same_model(runs):
    reference, killed, recovery_s = runs
    assert _report(killed, "finetune")["resumed_from_epoch"] >= 1
    a = torch.load(reference.finetuned_model, weights_only=True)
    b = torch.load(killed.finetuned_model, weights_only=True)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)
    assert _report(killed, "finetune")["val_accuracy"] == _report(reference, "finetune")["val_accuracy"]
    print(f"dvc repro finetune after the last kill: {recovery_s:.1f} s")
