"""Thin Prefect tasks around pipeline_lib: retries, names and logging, no logic."""

from pipeline_lib.runtime import process_environment

process_environment()  # process start: before any task module imports Prefect
