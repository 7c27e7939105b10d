"""Flow retrain: what a schedule runs. Asks DVC whether data or params changed since the last
successful run; if not, records a skipped run and exits; otherwise runs the stale part of the DAG
(the pipeline flow: stale stages, evaluation, MLflow run, champion/challenger) under a lock, so
two retrain runs never write the same outputs at once.

    python -m flows.retrain run [--force] [--wait SECONDS]     # once
    python -m flows.retrain serve --cron "0 3 * * 1"           # on a schedule (Monday 03:00)
"""

from __future__ import annotations

import argparse
import json
import time

from prefect import flow, get_run_logger

from flows.pipeline import pipeline
from pipeline_lib import atomic, preflight
from pipeline_lib.config import load_params
from pipeline_lib.locks import exclusive
from pipeline_lib.paths import Paths
from tasks.dvc import stale_stages


@flow(name="retrain")
def retrain(root: str | None = None, force: bool = False, wait_seconds: float = 0.0) -> dict:
    paths = Paths.for_root(root)
    logger = get_run_logger()
    started = time.perf_counter()
    with exclusive(paths.retrain_lock, "retrain run", wait_seconds):
        preflight.check(load_params(paths.root), paths)  # before `dvc status` hashes the data
        stale = stale_stages(paths.root)
        if not stale and not force:
            result = {"status": "skipped", "reason": "dvc status: data, params and code unchanged since the last run"}
        else:
            result = {"status": "ran", "stale": stale, **pipeline(root=str(paths.root), force=force, stale=stale)}
        result["seconds"] = round(time.perf_counter() - started, 2)
        _append_history(paths, result)
    logger.info("retrain %s: %s", result["status"], json.dumps(result))
    return result


def _append_history(paths: Paths, result: dict) -> None:
    """reports/retrain_history.jsonl: one line per retrain run, skipped ones included."""
    atomic.append_line(paths.retrain_history,
                       json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **result}, default=str))


if __name__ == "__main__":
    from flows._cli import run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    once = sub.add_parser("run", help="retrain now if anything changed")
    once.add_argument("--force", action="store_true", help="run every stage even if nothing changed")
    once.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="wait this long for a running retrain to finish instead of refusing at once")
    serve = sub.add_parser("serve", help="serve the flow on a cron schedule (Ctrl-C stops it)")
    serve.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * 1"')
    serve.add_argument("--name", default="retrain-scheduled")
    args = parser.parse_args()
    if args.command == "run":
        outcome = run(retrain, force=args.force, wait_seconds=args.wait)
        print(f"retrain {outcome['status']} in {outcome['seconds']} s")
    else:
        retrain.serve(name=args.name, cron=args.cron, parameters={"root": str(Paths.for_root().root)})
