"""The whole DAG of dvc.yaml from Python, in one Prefect flow run (one process, one Prefect start).

DVC's status is asked once for the whole DAG; each stale stage runs as a subflow, then is
committed to dvc.lock through DVC's Python API, so a following `dvc repro` finds nothing to do; a
stage that was up to date is asked again only once a stage before it has run, so exactly the
stages `dvc repro` would run are run (an upstream stage that rewrote identical outputs leaves its
downstream stages alone). Scheduled runs use this flow.

    python -m flows.pipeline            # run what is stale
    python -m flows.pipeline --force    # run every stage
"""

from __future__ import annotations

import argparse
import importlib

from prefect import flow, get_run_logger

from pipeline_lib import atomic, preflight
from pipeline_lib.config import load_params
from pipeline_lib.errors import PipelineError
from pipeline_lib.paths import Paths
from pipeline_lib.stages import STAGES
from tasks.dvc import commit_stage, is_stale, stage_order, stale_stages


def stage_flow(stage: str):
    """The Prefect flow of a stage: ``flows.<stage>.<stage>``."""
    return getattr(importlib.import_module(f"flows.{stage}"), stage)


@flow(name="pipeline")
def pipeline(root: str | None = None, force: bool = False, stale: list[str] | None = None) -> dict:
    """``stale``: the stages `dvc status` found stale, when the caller has just asked (retrain)."""
    paths = Paths.for_root(root)
    # fail fast on a bad params.yaml, and name a missing data path or a named pipe in one line
    # before `dvc status` hashes the data (a bare [Errno 2], or a wait forever)
    preflight.check(load_params(paths.root), paths)
    logger = get_run_logger()
    order = stage_order(paths.root)
    unknown = [s for s in order if s not in STAGES]
    if unknown:
        raise PipelineError(f"dvc.yaml has stage(s) {unknown} that pipeline_lib.stages.STAGES does not list")
    stale = set(stale_stages(paths.root) if stale is None and not force else stale or [])
    ran: list[str] = []
    for stage in order:
        if force or stage in stale or (ran and is_stale(paths.root, stage)):
            stage_flow(stage)(root=str(paths.root))
            commit_stage(paths.root, stage)
            ran.append(stage)
        else:
            logger.info("stage %s is up to date, skipped", stage)
    metrics = atomic.read_json(paths.metrics)
    logger.info("ran %s; test accuracy %s", ran or "nothing", metrics.get("accuracy"))
    return {"ran": ran, "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1")}


if __name__ == "__main__":
    from flows._cli import run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="run every stage, stale or not")
    run(pipeline, force=parser.parse_args().force)
