"""Flow finetune: the DVC stage of the same name runs `python -m flows.finetune`."""

from __future__ import annotations

from prefect import flow

from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS, load_params_task


@flow(name="finetune")
def finetune(root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    return STAGE_TASKS["finetune"](load_params_task(paths), paths)


if __name__ == "__main__":
    from flows._cli import run

    run(finetune)
