"""Prefect flows, composition only: one flow per stage of pipeline_lib.stages.STAGES (the module
and the flow carry the stage's name; dvc.yaml's cmd runs `python -m flows.<stage>`), plus the
flows that are not stages, listed in OTHER_FLOWS."""

import sys

from pipeline_lib.runtime import process_environment

process_environment()  # process start: before any flow module imports Prefect
try:
    import prefect  # noqa: F401
except ModuleNotFoundError:  # `dvc repro` runs `python` from PATH: outside the venv it is another one
    sys.exit(f"error: Prefect is not installed for {sys.executable}. Run the pipeline from the project's venv: "
             "`source .venv/bin/activate` then `dvc repro` (or `make run`).")

OTHER_FLOWS = ("pipeline", "retrain", "predict", "label")  # the whole DAG, scheduled retraining, batch
# prediction, the labelling loop with Label Studio
