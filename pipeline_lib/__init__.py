"""All the real logic of the transfer-learning pipeline.

This package imports neither Prefect nor DVC: flows/ and tasks/ compose it.
Importing it silences telemetry and update checks of the stack and shortens MLflow's HTTP
retries (users may still override each variable in their environment).
"""

import os

_QUIET_ENV = {
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
for _key, _value in _QUIET_ENV.items():
    os.environ.setdefault(_key, _value)

__all__ = ["_QUIET_ENV"]
