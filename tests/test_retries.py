"""Transient failures are retried with backoff by the Prefect tasks (a real full file system that
frees up between attempts), user mistakes are not."""

import errno
import time

import pytest

from pipeline_lib.errors import PipelineError, TransientError, io_error, is_transient, is_unreachable
from tests.helpers import write_folder_dataset


def test_what_counts_as_transient():
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert not is_transient(OSError(errno.EROFS, "Read-only file system"))
    assert not is_transient(FileNotFoundError(errno.ENOENT, "missing"))
    assert is_transient(TransientError("server down")) and not is_transient(PipelineError("bad param"))
    assert isinstance(io_error("x", OSError(errno.ENOSPC, "full")), TransientError)
    assert type(io_error("x", OSError(errno.EACCES, "denied"))) is PipelineError


SCRIPT = """
import json, sys
from prefect import flow
from prefect.client.orchestration import get_client
from pipeline_lib.config import parse_params
from pipeline_lib.paths import Paths
from tasks.stages import STAGE_TASKS

@flow
def just_ingest():
    state = STAGE_TASKS["ingest"](parse_params(json.loads(sys.argv[2])), Paths.for_root(sys.argv[1]), return_state=True)
    return state.is_completed(), state.state_details.task_run_id

completed, task_run_id = just_ingest()
with get_client(sync_client=True) as client:
    runs = client.read_task_run(task_run_id).run_count
print(json.dumps({"completed": completed, "run_count": runs}))
"""


def _awaiting_retry(api_url: str) -> bool:
    import json
    import urllib.request

    body = json.dumps({"task_runs": {"state": {"name": {"any_": ["AwaitingRetry"]}}}}).encode()
    request = urllib.request.Request(f"{api_url}/task_runs/filter", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return bool(json.loads(resp.read()))


def _run_ingest(root, raw, api_url, on_retry=None):
    """The real ingest task in a real flow run (a subprocess against the local Prefect server);
    ``on_retry`` runs once Prefect has scheduled a retry."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), json.dumps(raw)], cwd=ROOT,
                            env={**os.environ, "PREFECT_API_URL": api_url}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while on_retry and proc.poll() is None:
        if _awaiting_retry(api_url):
            on_retry()
            break
        time.sleep(0.1)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.parametrize("message", [
    "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with exception HTTPConnectionPool: Max retries "
    "exceeded (Caused by NewConnectionError: Connection refused)",
    # the server killed while it answered (seen in CI): the response breaks off
    "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with exception ('Connection broken: "
    "IncompleteRead(0 bytes read, 655 more expected)', IncompleteRead(0 bytes read, 655 more expected))"])
def test_a_tracking_server_that_stops_answering_is_recognised(message):
    from mlflow.exceptions import MlflowException

    assert is_unreachable(MlflowException(message))
    assert not is_unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: Run 'abc' not found"))


def test_a_full_disk_that_frees_up_is_retried_and_the_stage_completes(tmp_path, tmpfs, prefect_api):
    write_folder_dataset(tmp_path / "raw", per_class=8)
    data = tmpfs("data", "size=256k")  # ingest writes data/prepared here
    ballast = data / "ballast"
    with open(ballast, "wb", buffering=0) as fh:  # fill it up
        with pytest.raises(OSError, match="No space left"):
            while True:
                fh.write(b"\0" * 4096)
    raw = {"data": {"source": "folder", "path": str(tmp_path / "raw")}}
    result, log = _run_ingest(tmp_path, raw, prefect_api, on_retry=ballast.unlink)  # space comes back
    assert result["completed"] and result["run_count"] == 2
    assert "No space left on device" in log and "Retry 1/2 will start 2 second(s) from now" in log
    assert (data / "prepared" / "manifest.parquet").exists()


def test_a_user_mistake_is_not_retried(tmp_path, prefect_api):
    raw = {"data": {"source": "folder", "path": str(tmp_path / "nowhere")}}
    result, log = _run_ingest(tmp_path, raw, prefect_api)
    assert not result["completed"] and result["run_count"] == 1 and "does not exist" in log
    assert "Retry" not in log
