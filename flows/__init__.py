"""Prefect flows: one per stage (run by dvc.yaml's cmd) and the full pipeline. Composition only."""

import pipeline_lib  # noqa: F401  (silences telemetry before Prefect is imported)
