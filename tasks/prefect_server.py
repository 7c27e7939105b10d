"""Run a command against one local Prefect API server instead of one temporary server per process.

    python -m tasks.prefect_server dvc repro

Every DVC stage is its own process; without a server each would start (and stop) Prefect's
temporary server, several seconds apiece. This starts `prefect server start` once on 127.0.0.1,
points PREFECT_API_URL at it for the command, and stops it afterwards. The runs stay in Prefect's
database (PREFECT_HOME), so `prefect server start` shows them later. If PREFECT_API_URL is already
set, the command simply runs against that server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

EXECUTION_ENV = "PIPELINE_EXECUTION_ID"


def execution_id() -> str:
    """One id for every flow run of one pipeline execution: inherited from the environment (set by
    the first flow, or by `python -m tasks.prefect_server`), else the `dvc repro` process this stage
    runs under (all its stages share it), else a new one."""
    if os.environ.get(EXECUTION_ENV):
        return os.environ[EXECUTION_ENV]
    try:
        import psutil

        for parent in psutil.Process().parents():
            if parent.name().startswith("dvc") or any(part.endswith("/dvc") or part == "dvc"
                                                       for part in parent.cmdline()[:2]):
                return f"repro-{time.strftime('%Y%m%d-%H%M%S', time.localtime(parent.create_time()))}-{parent.pid}"
    except Exception:  # noqa: BLE001 - no process table (a sandbox): the id only groups runs
        pass
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_server(timeout: float = 90.0) -> tuple[subprocess.Popen, str, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")  # beside the server's database
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - the server process writes it until stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "false")},
    )
    log.close()  # the child holds its own copy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _healthy(url):
            return proc, url, log.name
        time.sleep(0.2)
    stop_server(proc)
    with open(log.name, errors="replace") as fh:
        tail = fh.read()[-2000:]
    raise SystemExit(f"error: the local Prefect server did not start within {timeout:.0f}s "
                     f"(log {log.name}):\n{tail}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "dvc":  # before DVC hashes the data: a missing data.path, a named pipe
        from pipeline_lib import preflight
        from pipeline_lib.config import load_params
        from pipeline_lib.errors import PipelineError
        from pipeline_lib.paths import Paths

        try:
            paths = Paths.for_root()
            preflight.check(load_params(paths.root), paths)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    os.environ[EXECUTION_ENV] = execution_id()  # the stages `dvc repro` runs share it
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(argv)
    started = time.perf_counter()
    proc, url, log = start_server()
    print(f"Prefect API on {url} (started in {time.perf_counter() - started:.1f}s; log {log})", flush=True)
    try:
        return subprocess.call(argv, env={**os.environ, "PREFECT_API_URL": url})
    except KeyboardInterrupt:
        return 130
    finally:
        stop_server(proc)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
