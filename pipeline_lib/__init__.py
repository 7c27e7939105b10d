"""All the real logic of the transfer-learning pipeline.

This package imports neither Prefect nor DVC: flows/ and tasks/ compose it. Importing it changes
nothing in the process; pipeline_lib.runtime.process_environment() is called explicitly where a
process starts (flows/ and tasks/ package init, tests' conftest, benchmarks).
"""
