"""Thin Prefect tasks for batch prediction; loading the model retries when the tracking server does
not answer (it may be restarting), not when the model is not there; predicting does not retry (a
bad input is not transient)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from pipeline_lib import predict
from tasks.stages import RETRY_DELAYS, retry_if_transient


@task(cache_policy=NONE, name="load_model", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def load_model_task(model_uri: str, tracking_uri: str) -> predict.LoadedModel:
    return predict.load_registered(model_uri, tracking_uri)


@task(cache_policy=NONE, name="predict")
def predict_task(loaded: predict.LoadedModel, source: str, out: str, batch_size: int, top_k: int) -> dict:
    return predict.write_predictions(loaded, predict.read_inputs(loaded, Path(source)), Path(out), batch_size, top_k)


@task(cache_policy=NONE, name="read_inputs")
def read_inputs_task(loaded: predict.LoadedModel, source: str) -> list:
    return predict.read_inputs(loaded, Path(source))


@task(cache_policy=NONE, name="predict_shard", retries=1)
def predict_shard_task(items: list, model_uri: str, tracking_uri: str, batch_size: int, top_k: int) -> tuple:
    """Runs on a Dask worker: one shard's (table, skipped)."""
    return predict.predict_shard(model_uri, tracking_uri, items, batch_size, top_k)


@task(cache_policy=NONE, name="write_predictions")
def write_predictions_task(loaded: predict.LoadedModel, items: list, out: str, batch_size: int, top_k: int,
                           parts: list | None, started: float) -> dict:
    return predict.write_predictions(loaded, items, Path(out), batch_size, top_k, parts=parts, started=started)
