"""DVC as seen from Prefect: which stages are stale, and recording a stage run in dvc.lock."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Iterator

import networkx as nx
from prefect import task
from prefect.cache_policies import NONE

from pipeline_lib.errors import PipelineError


@contextlib.contextmanager
def _repo(root: Path) -> Iterator:
    """DVC's Repo; its errors (not a DVC repo, dvc.lock git-ignored, ...) become one clear message."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            yield repo
    except DvcException as exc:
        raise PipelineError(f"DVC: {exc} (in {root})") from None


def stage_order(root: Path) -> list[str]:
    """The stages of dvc.yaml, upstream first."""
    with _repo(root) as repo:
        return [s.addressing for s in reversed(list(nx.topological_sort(repo.index.graph)))]


@task(cache_policy=NONE, name="dvc_status")
def is_stale(root: Path, stage: str) -> bool:
    """True when DVC would re-run ``stage`` (changed deps, params, outs, or never run)."""
    with _repo(root) as repo:
        return bool(repo.status(targets=[stage]))


@task(cache_policy=NONE, name="dvc_status_all")
def stale_stages(root: Path) -> list[str]:
    """Every stage DVC would re-run (`dvc status`): changed data, params, code, or never run."""
    with _repo(root) as repo:
        return sorted(name.split(":")[-1] for name in repo.status())


@task(cache_policy=NONE, name="dvc_commit")
def commit_stage(root: Path, stage: str) -> None:
    """Store the stage's outputs in the DVC cache and its hashes in dvc.lock, as `dvc repro` does."""
    with _repo(root) as repo:
        repo.commit(stage, force=True)


@task(cache_policy=NONE, name="dvc_add")
def track(root: Path, path: Path) -> bool:
    """`dvc add path` in a DVC project (the labels are versioned like the data); False elsewhere."""
    if not (root / ".dvc").is_dir():
        return False
    with _repo(root) as repo, contextlib.redirect_stdout(io.StringIO()):  # DVC's "to track the changes with git"
        repo.add([str(path)])
    return True
