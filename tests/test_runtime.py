"""Threads follow what the process may use (affinity, a container's CPU quota), not the host's cores."""

import os

import pytest

from pipeline_lib.errors import PipelineError
from pipeline_lib.runtime import available_cpus, chunks, in_lanes, lanes_map, pick_device, thread_budget

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, AFFINITY),                      # cgroup v2, no quota
    ({"cpu.max": "50000 100000\n"}, 1),                           # half a CPU: one thread
    ({"cpu.max": f"{AFFINITY * 300000} 100000\n"}, AFFINITY),     # a quota above the mask: the mask
    ({"cpu/cpu.cfs_quota_us": "100000", "cpu/cpu.cfs_period_us": "100000"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, AFFINITY),
    ({"cpu.max": "garbage"}, AFFINITY),
    ({}, AFFINITY),
])
def test_available_cpus_takes_the_smaller_of_affinity_and_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert available_cpus(str(tmp_path)) == expected


def test_thread_budget_is_the_param_then_omp_num_threads_then_the_cpus(monkeypatch):
    """One budget for torch's threads and a local Dask cluster's share per worker."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert thread_budget(3) == 3 and thread_budget(0) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert thread_budget(0) == available_cpus()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert thread_budget(0) == available_cpus()
    assert chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]] and chunks([], 2) == []


def test_cuda_without_a_gpu_is_one_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PipelineError, match="runtime.device: cuda requested but no CUDA device"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"


def test_precision_resolves_per_device_and_autocast_honours_it():
    import contextlib

    import torch

    from pipeline_lib.runtime import autocast, grad_scaler, resolve_precision

    assert resolve_precision("cpu") == "fp32" and resolve_precision("cpu", "bf16") == "bf16"
    assert isinstance(autocast("cpu"), contextlib.nullcontext) and grad_scaler("cpu", "fp16") is None
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")


def test_the_backbone_follows_device_and_precision_and_its_vectors_stay_fp32(backbone_small):
    import torch

    images = torch.rand(4, 3, 32, 32)
    seen = []
    hook = backbone_small.model.register_forward_hook(lambda m, i, out: seen.append((out.dtype, out.device.type)))
    try:
        fp32 = backbone_small.to(torch.device("cpu"), "fp32")(images)
        fp32_key = backbone_small.key
        bf16 = backbone_small.to(torch.device("cpu"), "bf16")(images)
        assert backbone_small.key != fp32_key  # bf16 vectors are cached apart from fp32 ones
        assert backbone_small.to(torch.device("cpu"), "auto").key == fp32_key  # auto is fp32 on the CPU
    finally:
        hook.remove()
        backbone_small.to(torch.device("cpu"))
    assert seen == [(torch.float32, "cpu"), (torch.bfloat16, "cpu")]
    assert fp32.dtype == bf16.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min() > 0.98


def test_lanes_map_keeps_the_order_splits_the_threads_and_restores_them():
    import threading
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []

    def job(i):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        time.sleep(0.02)  # busy: the next job goes to the other lane
        return i * i

    try:
        assert list(lanes_map(job, range(9), "cpu")) == [i * i for i in range(9)]
        assert {n for _, n in seen} == {1} and len({t for t, _ in seen}) == 2  # two lanes of one thread
        assert torch.get_num_threads() == 2
        seen.clear()
        assert list(lanes_map(job, range(3), "cuda")) == [0, 1, 4]  # one lane (this thread) elsewhere
        assert {t for t, _ in seen} == {threading.get_ident()}
        assert in_lanes([lambda: 1, lambda: 2], "cpu") == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_featurize_in_lanes_gives_the_vectors_of_one_batch_at_a_time(tmp_path, backbone_small):
    import numpy as np
    import torch

    from tests.helpers import write_folder_dataset

    write_folder_dataset(tmp_path, per_class=5)
    files = sorted(tmp_path.rglob("*.png"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one lane
        one = backbone_small.embed(files, 4, torch.device("cpu"))
        torch.set_num_threads(2)  # two lanes of one thread
        two = backbone_small.embed(files, 4, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one[:4], backbone_small.embed(files[:4], 4, torch.device("cpu")), rtol=1e-5, atol=1e-6)
