"""The process's runtime, set by explicit calls at process start (flows/ and tasks/ package init,
tests' conftest, benchmarks' helpers), never as a side effect of importing pipeline_lib:
the stack's telemetry and update checks off, and torch's CPU threads."""

from __future__ import annotations

import os

QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_HUB_OFFLINE": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    # an MLflow server that does not answer: 3 retries per request (1, 2, 4 s) instead of MLflow's
    # 7 with up to 2 min between them; the logging task retries twice more (tasks/stages.py)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def quiet_environment() -> None:
    """Silence telemetry and update checks of the stack and shorten MLflow's HTTP retries; a value
    already in the environment wins. Call before Prefect, MLflow or DVC is imported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def configure_threads(num_threads: int) -> None:
    """torch's intra-op CPU threads (0 = one per core)."""
    import torch

    torch.set_num_threads(num_threads or os.cpu_count() or 1)
