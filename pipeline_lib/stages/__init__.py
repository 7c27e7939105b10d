"""The pipeline's stages, in DAG order: one module per stage, each with ``run(params, paths) -> dict``.

This tuple is the one list of stages: dvc.yaml's stages, the Prefect stage flows in flows/, the
pipeline flow, the tasks, tracking, tests and benchmarks all follow it (tests/test_structure.py
checks that dvc.yaml and flows/ agree with it). A stage module imports shared modules of
pipeline_lib only, never another stage.
"""

from __future__ import annotations

import importlib
from types import ModuleType

STAGES: tuple[str, ...] = ("ingest", "synthesize", "augment", "featurize", "train_head", "finetune", "evaluate")


def stage_module(name: str) -> ModuleType:
    """The module of a stage, imported on demand (ingest runs without importing torch)."""
    if name not in STAGES:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"{__name__}.{name}")


def run_stages(params, paths, last: str = STAGES[-1], first: str = STAGES[0]) -> dict[str, dict]:
    """Run the stages from ``first`` to ``last`` (DAG order) in this process, as `dvc repro` would
    on a fresh project; returns each stage's report. For tests, benchmarks and notebooks."""
    names = STAGES[STAGES.index(first): STAGES.index(last) + 1]
    return {name: stage_module(name).run(params, paths) for name in names}


__all__ = ["STAGES", "stage_module", "run_stages"]
