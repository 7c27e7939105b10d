"""Prefect flows, composition only: one flow per stage of pipeline_lib.stages.STAGES (the module
and the flow carry the stage's name; dvc.yaml's cmd runs `python -m flows.<stage>`), plus the
flows that are not stages, listed in OTHER_FLOWS."""

from pipeline_lib.runtime import quiet_environment

quiet_environment()  # process start: before any flow module imports Prefect

OTHER_FLOWS = ("pipeline", "retrain", "predict")  # the whole DAG, scheduled retraining, batch prediction
