"""DVC as seen from Prefect: which stages are stale, and recording a stage run in dvc.lock."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
from prefect import task
from prefect.cache_policies import NONE


def _repo(root: Path):
    from dvc.repo import Repo

    return Repo(str(root))


def stage_order(root: Path) -> list[str]:
    """The stages of dvc.yaml, upstream first."""
    with _repo(root) as repo:
        return [s.addressing for s in reversed(list(nx.topological_sort(repo.index.graph)))]


@task(cache_policy=NONE, name="dvc_status")
def is_stale(root: Path, stage: str) -> bool:
    """True when DVC would re-run ``stage`` (changed deps, params, outs, or never run)."""
    with _repo(root) as repo:
        return bool(repo.status(targets=[stage]))


@task(cache_policy=NONE, name="dvc_commit")
def commit_stage(root: Path, stage: str) -> None:
    """Store the stage's outputs in the DVC cache and its hashes in dvc.lock, as `dvc repro` does."""
    with _repo(root) as repo:
        repo.commit(stage, force=True)
