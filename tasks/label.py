"""Thin Prefect tasks of the labelling loop: connecting retries while the server does not answer
(it may be starting); pushing and pulling do not retry (a refused request is not transient)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from pipeline_lib.config import Params
from pipeline_lib.label import pull, push, studio
from pipeline_lib.paths import Paths
from tasks.stages import RETRY_DELAYS, retry_if_transient


@task(cache_policy=NONE, name="connect_label_studio", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def connect_task(url: str) -> studio.Client:
    return studio.Client.connect(url)


@task(cache_policy=NONE, name="push")
def push_task(params: Params, paths: Paths, client: studio.Client, review: bool, new_classes: bool) -> dict:
    return push.push(params, paths, client, push.REVIEW if review else push.LABEL_NEXT, new_classes)


@task(cache_policy=NONE, name="pull")
def pull_task(params: Params, paths: Paths, client: studio.Client, new_classes: bool) -> dict:
    return pull.pull(params, paths, client, new_classes)
