"""Entry-point helper: run a flow from the command line; a user mistake (PipelineError) is printed
as one clear message with exit status 2, never as a traceback."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from typing import Callable

from pipeline_lib.errors import PipelineError
from pipeline_lib.paths import Paths
from tasks.prefect_server import EXECUTION_ENV, execution_id


class _HideUserErrorTracebacks(logging.Filter):
    """Prefect logs a flow's exception with its traceback; for a PipelineError the message is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


class _OnceOnTheConsole(logging.Filter):
    """A user mistake is printed once, as the final ``error:`` line: the console drops Prefect's
    task, flow and state lines that repeat it (the Prefect UI's log still has them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, PipelineError) and "PipelineError" not in record.getMessage()


def _quiet_console() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    for handler in {h for logger in loggers if isinstance(logger, logging.Logger) for h in logger.handlers}:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, _OnceOnTheConsole)
                                                                  for f in handler.filters):
            handler.addFilter(_OnceOnTheConsole())


def run(flow: Callable, **kwargs) -> object:
    """Run a flow from the command line, named and tagged with the execution id, with pipeline_lib's
    progress lines in its log."""
    from prefect import tags

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_HideUserErrorTracebacks())
    _quiet_console()
    logging.getLogger("pipeline_lib").setLevel(logging.INFO)
    execution = os.environ[EXECUTION_ENV] = execution_id()
    if "root" in inspect.signature(flow.fn).parameters and kwargs.get("root") is None:
        kwargs["root"] = str(Paths.for_root().root)  # the flow run shows which project it ran on
    try:
        with tags(f"execution:{execution}"):
            return flow.with_options(flow_run_name=f"{flow.name} · {execution}")(**kwargs)
    except PipelineError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
