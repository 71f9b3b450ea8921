# Common tasks. Everything runs inside ./.venv (created by `make setup`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Installed before the package so that pip keeps it: an unpinned torch would pull a multi-GB CUDA build
# where a CPU wheel is available locally. On a GPU machine: make setup TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
GLUE_DIR ?= /work/shared/glue_data
export STILTS_MODEL_DIR ?= $(CURDIR)/.cache/models
MODEL ?= $(STILTS_MODEL_DIR)/all-MiniLM-L6-v2
BENCH_ARGS ?=

.PHONY: setup test test-slow model demo bench

setup:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev,bench,plot]"

# Offline: the tests must never reach the Hugging Face Hub. `make test` leaves out the tests marked
# slow (real learning, the demo, benchmarks, several processes); `make test-slow` runs just those.
test:
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow" tests

test-slow:
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow tests

model:
	PYTHON=$(PY) bash scripts/fetch_minilm.sh

demo: setup model
	bash scripts/demo.sh

bench:
	GLUE_DIR="$(GLUE_DIR)" $(PY) scripts/benchmark.py --task rte --data_dir "$(GLUE_DIR)/RTE" --model "$(MODEL)" $(BENCH_ARGS)
