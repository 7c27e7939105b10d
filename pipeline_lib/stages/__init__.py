"""The pipeline's stages, in DAG order: one module per stage, each with ``run(params, paths) -> dict``.

This tuple is the one list of stages: dvc.yaml's stages, the Prefect stage flows in flows/, the
pipeline flow, the tasks, tracking, tests and benchmarks all follow it (tests/test_structure.py
checks that dvc.yaml and flows/ agree with it). A stage module imports shared modules of
pipeline_lib only, never another stage.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from datetime import datetime, timezone
from types import ModuleType

_log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("ingest", "synthesize", "augment", "featurize", "train_head", "finetune", "evaluate", "advise")


def stage_module(name: str) -> ModuleType:
    """The module of a stage, imported on demand (ingest runs without importing torch)."""
    if name not in STAGES:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"{__name__}.{name}")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def run_stage(name: str, params, paths, **kwargs) -> dict:
    """Run one stage and stamp its report (``paths.stage_report``) with when it ran: ``started_at``,
    ``finished_at`` (ISO 8601, UTC) and ``wall_seconds``; MLflow's stage runs carry these times."""
    from .. import atomic
    from ..summary import stage_line

    started = time.time()
    result = stage_module(name).run(params, paths, **kwargs)
    finished = time.time()
    report_file = paths.stage_report(name)
    if report_file.exists():
        report = json.loads(report_file.read_text())
        report.update(started_at=_iso(started), finished_at=_iso(finished), wall_seconds=round(finished - started, 2))
        atomic.write_json(report_file, report)
        _log.log(logging.WARNING if report.get("n_rejected") else logging.INFO, stage_line(name, report, paths))
    return result


def run_stages(params, paths, last: str = STAGES[-1], first: str = STAGES[0]) -> dict[str, dict]:
    """Run the stages from ``first`` to ``last`` (DAG order) in this process, as `dvc repro` would
    on a fresh project; returns each stage's report. For tests, benchmarks and notebooks."""
    names = STAGES[STAGES.index(first): STAGES.index(last) + 1]
    return {name: run_stage(name, params, paths) for name in names}


__all__ = ["STAGES", "stage_module", "run_stage", "run_stages"]
