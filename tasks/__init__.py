"""Thin Prefect tasks around pipeline_lib: retries, names and logging, no logic."""
