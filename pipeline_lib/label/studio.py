"""A small client of Label Studio's REST API (Community Edition, 1.x): the calls the labelling loop
makes, each failure turned into one line that says what to do.

Not label-studio-sdk: its pins (opencv-python-headless 4.12, hence numpy < 2.3) would downgrade the
project's numpy. These are Label Studio's documented endpoints; tests run them against a real server.

The token is read from LABEL_STUDIO_API_KEY (never from params.yaml, never printed or logged): a
legacy token (``Authorization: Token …``), or a personal access token (a JWT refresh token, traded
at /api/token/refresh for an access token, ``Authorization: Bearer …``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import PipelineError, TransientError

TOKEN_ENV = "LABEL_STUDIO_API_KEY"
TIMEOUT = 60  # seconds; an export of a few thousand tasks takes a few


@dataclass
class Client:
    url: str
    token: str = field(repr=False)
    _headers: dict = field(default_factory=dict, repr=False)

    # ---- connection -----------------------------------------------------------------------------
    @classmethod
    def connect(cls, url: str) -> "Client":
        """A client whose server answered and accepted the token."""
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise PipelineError(f"no Label Studio token: set {TOKEN_ENV} to your access token (Label Studio: "
                                "Account & Settings → Personal Access Token, or the legacy token)")
        client = cls(url.rstrip("/"), token)
        client._headers = {"Authorization": client._authorization()}
        client.request("GET", "/api/current-user/whoami")
        return client

    def _authorization(self) -> str:
        if self.token.count(".") != 2:  # a legacy token
            return f"Token {self.token}"
        answer = self._send("POST", "/api/token/refresh", json={"refresh": self.token}, headers={})
        if answer.status_code != 200:
            raise PipelineError(f"Label Studio at {self.url} refused the token in {TOKEN_ENV} "
                                f"(HTTP {answer.status_code}): create a new one in Account & Settings")
        return f"Bearer {answer.json()['access']}"

    def _send(self, method: str, path: str, headers: dict | None = None, **kwargs):
        import requests

        try:
            return requests.request(method, self.url + path, headers=self._headers if headers is None else headers,
                                    timeout=TIMEOUT, **kwargs)
        except requests.exceptions.ConnectionError:
            raise TransientError(f"Label Studio does not answer at {self.url}: start it (make label-studio) or set "
                                 "label.url in params.yaml to where it runs") from None
        except requests.exceptions.Timeout:
            raise TransientError(f"Label Studio at {self.url} did not answer {method} {path} within {TIMEOUT} s") from None

    def request(self, method: str, path: str, **kwargs):
        answer = self._send(method, path, **kwargs)
        if answer.status_code in (401, 403):
            raise PipelineError(f"Label Studio at {self.url} refused the token in {TOKEN_ENV} (HTTP "
                                f"{answer.status_code}): copy the token from Account & Settings")
        if answer.status_code >= 500:
            raise TransientError(f"Label Studio at {self.url} failed on {method} {path} (HTTP {answer.status_code})")
        if answer.status_code >= 400:
            raise PipelineError(f"Label Studio refused {method} {path} (HTTP {answer.status_code}): "
                                f"{_detail(answer)}")
        return answer.json() if answer.content else None

    # ---- projects -------------------------------------------------------------------------------
    def find_project(self, title: str) -> dict | None:
        page = self.request("GET", "/api/projects", params={"title": title, "page_size": 1000})
        found = [p for p in (page.get("results", page) if isinstance(page, dict) else page) if p["title"] == title]
        return found[0] if found else None

    def create_project(self, title: str, label_config: str, description: str = "") -> dict:
        return self.request("POST", "/api/projects", json={"title": title, "label_config": label_config,
                                                            "description": description})

    def project_url(self, project_id: int, view: int | None = None) -> str:
        return f"{self.url}/projects/{project_id}/data" + (f"?tab={view}" if view else "")

    def add_local_storage(self, project_id: int, folder: str, title: str) -> None:
        """Let the project show files under ``folder`` (needs a server started with local-file serving
        and a document root above ``folder``)."""
        existing = self.request("GET", "/api/storages/localfiles", params={"project": project_id})
        if any(s.get("path") == folder for s in existing):
            return
        self.request("POST", "/api/storages/localfiles", json={"project": project_id, "path": folder, "title": title,
                                                                "use_blob_urls": True})

    def ensure_view(self, project_id: int, data: dict) -> int:
        """A Data Manager tab (``data``: its title, ordering, hidden columns), created once; its id."""
        views = self.request("GET", "/api/dm/views", params={"project": project_id})
        for view in views:
            if view.get("data", {}).get("title") == data["title"]:
                return view["id"]
        return self.request("POST", "/api/dm/views", json={"project": project_id, "data": data})["id"]

    # ---- tasks ----------------------------------------------------------------------------------
    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        if not tasks:
            return 0
        return int(self.request("POST", f"/api/projects/{project_id}/import", json=tasks)["task_count"])

    def tasks(self, project_id: int, annotated_only: bool = False) -> list[dict]:
        """Every task of the project (or those with an annotation) with its annotations."""
        return self.request("GET", f"/api/projects/{project_id}/export", params={
            "exportType": "JSON", "download_all_tasks": "false" if annotated_only else "true"})


def _detail(answer) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:200]
    return str(body.get("validation_errors") or body.get("detail") or body)[:300]
