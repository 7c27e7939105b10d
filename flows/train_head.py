"""Flow train_head: the DVC stage of the same name runs `python -m flows.train_head`."""

from __future__ import annotations

from prefect import flow

from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS, load_params_task


@flow(name="train_head")
def train_head(root: str | None = None) -> dict:
    paths = Paths.for_root(root)
    return STAGE_TASKS["train_head"](load_params_task(paths), paths)


if __name__ == "__main__":
    from flows._cli import run

    run(train_head)
