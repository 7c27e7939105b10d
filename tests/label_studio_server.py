"""A real Label Studio server on 127.0.0.1 for the tests and the labelling-loop benchmark: the
Community Edition from its own venv (`make label-studio-install`: .venv-label-studio), sqlite and a
data dir of its own, a user with a known legacy token, local-file serving under ``document_root``."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks.prefect_server import _free_port, stop_server

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("LABEL_STUDIO_VENV", ROOT / ".venv-label-studio"))
BINARY = VENV / "bin" / "label-studio"
TOKEN = "test-token-0123456789"
USER, PASSWORD = "labeller@localhost", "labeller-password"


@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_server(self.proc)


def available() -> str | None:
    """None when the server can be started here, else why not."""
    return None if BINARY.exists() else f"{BINARY} not found: `make label-studio-install` creates it"


def start(data_dir: Path, document_root: Path, timeout: float = 300.0) -> Server:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**os.environ, "LATEST_VERSION_CHECK": "false", "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
           "DJANGO_DB": "sqlite", "LABEL_STUDIO_USERNAME": USER, "LABEL_STUDIO_PASSWORD": PASSWORD,
           "LABEL_STUDIO_USER_TOKEN": TOKEN, "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
           "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root), "COLLECT_ANALYTICS": "false"}
    log = data_dir / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BINARY), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
                                 "--data-dir", str(data_dir)], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=data_dir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            request = urllib.request.Request(url + "/api/current-user/whoami", headers={"Authorization": f"Token {TOKEN}"})
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return Server(url, TOKEN, proc, log)
        except OSError:
            pass
        time.sleep(1.0)
    stop_server(proc)
    raise RuntimeError(f"Label Studio did not start within {timeout:.0f} s: {log.read_text(errors='replace')[-2000:]}")
