"""Thin Prefect tasks around pipeline_lib: retries, names and logging, no logic."""

from pipeline_lib.runtime import quiet_environment

quiet_environment()  # process start: before any task module imports Prefect
