"""The whole DAG of dvc.yaml from Python, in one Prefect flow run (one process, one Prefect start).

Each stale stage runs as a subflow, then is committed to dvc.lock through DVC's Python API, so a
following `dvc repro` finds nothing to do. Scheduled runs use this flow.

    python -m flows.pipeline            # run what is stale
    python -m flows.pipeline --force    # run every stage
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, get_run_logger

from flows.augment import augment
from flows.synthesize import synthesize
from flows.evaluate import evaluate
from flows.featurize import featurize
from flows.finetune import finetune
from flows.ingest import ingest
from flows.train_head import train_head
from pipeline_lib.config import Paths, load_params
from pipeline_lib.errors import PipelineError
from tasks.dvc import commit_stage, is_stale, stage_order

STAGE_FLOWS = {"ingest": ingest, "synthesize": synthesize, "augment": augment, "featurize": featurize, "train_head": train_head,
               "finetune": finetune, "evaluate": evaluate}


@flow(name="pipeline")
def pipeline(root: str | None = None, force: bool = False) -> dict:
    paths = Paths.for_root(root)
    load_params(paths.root)  # fail fast on a bad params.yaml, before any stage runs
    logger = get_run_logger()
    order = stage_order(paths.root)
    unknown = [s for s in order if s not in STAGE_FLOWS]
    if unknown:
        raise PipelineError(f"dvc.yaml has stage(s) {unknown} with no flow in flows/pipeline.py")
    ran: list[str] = []
    for stage in order:
        if force or ran or is_stale(paths.root, stage):
            STAGE_FLOWS[stage](root=str(paths.root))
            commit_stage(paths.root, stage)
            ran.append(stage)
        else:
            logger.info("stage %s is up to date, skipped", stage)
    metrics = json.loads(paths.metrics.read_text()) if paths.metrics.exists() else {}
    logger.info("ran %s; test accuracy %s", ran or "nothing", metrics.get("accuracy"))
    return {"ran": ran, "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1")}


if __name__ == "__main__":
    from flows._cli import run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="run every stage, stale or not")
    run(pipeline, force=parser.parse_args().force)
