"""All the real logic of the transfer-learning pipeline.

This package imports neither Prefect nor DVC: flows/ and tasks/ compose it.
Importing it silences telemetry and update checks of the stack (users may still override
each variable in their environment).
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
}
for _key, _value in _QUIET_ENV.items():
    os.environ.setdefault(_key, _value)

__all__ = ["_QUIET_ENV"]
