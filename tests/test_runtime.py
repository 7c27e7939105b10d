"""Threads follow what the process may use (affinity, a container's CPU quota), not the host's cores."""

import os

import pytest

from pipeline_lib.errors import PipelineError
from pipeline_lib.runtime import available_cpus, pick_device

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


def test_cuda_without_a_gpu_is_one_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PipelineError, match="runtime.device: cuda requested but no CUDA device"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"
