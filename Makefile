# One command each on a fresh machine: `make demo`, `make test`. Both create .venv if missing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install -q --disable-pip-version-check

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch and torchvision first, pinned, so nothing pulls a different build
	$(PIP) torch==2.14.1 torchvision==0.29.1 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PIP) -e ".[dev]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import cl_iad, anomalib, avalanche, torch"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cl-iad run --dataset synthetic --n-tasks 5 --model patchcore --strategy naive,replay --out results/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/bench_metrics.py --sklearn --out results/bench_metrics.json

lint: $(STAMP)
	$(BIN)/ruff check cl_iad tests benchmarks experiments

clean:
	rm -rf results .pytest_cache
