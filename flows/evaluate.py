"""Flow evaluate: the DVC stage of the same name runs `python -m flows.evaluate`.

It scores the head on the test split, then logs the whole pipeline execution to MLflow (one run
per execution: params, data version, every stage's metrics, plots and the classifier).
"""

from __future__ import annotations

from prefect import flow

from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS, load_params_task, log_to_mlflow_task


@flow(name="evaluate")
def evaluate(root: str | None = None, run_name: str | None = None) -> dict:
    paths = Paths.for_root(root)
    params = load_params_task(paths)
    metrics = STAGE_TASKS["evaluate"](params, paths)
    metrics["mlflow_run_id"] = log_to_mlflow_task(params, paths, run_name)
    return metrics


if __name__ == "__main__":
    from flows._cli import run

    run(evaluate)
