"""Flow advise: the DVC stage of the same name runs `python -m flows.advise`.

After evaluate: the learning curve on your data, what to label next, labels that look wrong and
data health (reports/advice.md), added to the MLflow run evaluate logged.
"""

from __future__ import annotations

from prefect import flow

from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS, load_params_task, log_advice_task


@flow(name="advise")
def advise(root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    params = load_params_task(paths)
    report = STAGE_TASKS["advise"](params, paths)
    report["mlflow_run_id"] = log_advice_task(params, paths)
    return report


if __name__ == "__main__":
    from flows._cli import run

    run(advise)
