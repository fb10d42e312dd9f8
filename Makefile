# One command each on a fresh machine: `make demo`, `make test`. Both create .venv if missing.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install -q --disable-pip-version-check
# exact versions of everything `make demo`, `make test` and CI install (pyproject.toml declares ranges)
LOCK := requirements/lock.txt

.PHONY: demo test test-fast lint bench clean lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch and torchvision first, pinned by the lock, so nothing pulls a different build
	$(PIP) -c $(LOCK) torch torchvision 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(PIP) -c $(LOCK) -e ".[dev]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import cl_iad, anomalib, avalanche, torch"
	touch $(STAMP)

# Re-resolve the lock with pip-tools, held to the versions installed in .venv (the ones the tests
# passed with); upgrade a package in .venv and run this to move the lock.
lock: $(STAMP)
	$(PIP) "pip-tools>=7.4"
	$(BIN)/pip freeze --all --exclude-editable --disable-pip-version-check > $(VENV)/tested.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile -q --extra dev --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links --annotation-style line -c $(VENV)/tested.txt -o $(LOCK) pyproject.toml

demo: $(STAMP)
	$(BIN)/cl-iad run --dataset synthetic --n-tasks 5 --model patchcore --strategy naive,replay --out results/demo

# The suite runs in parallel with pytest-xdist, one worker per core (at most TEST_WORKERS_MAX); each
# worker gets whole test files (--dist loadfile), so module-scoped fixtures are built once, and runs
# torch on one thread (tests/conftest.py). Measured on 2 cores: 6 min against 16 min in one process.
# TEST_WORKERS=0 runs everything in this process (e.g. to debug with pdb).
TEST_WORKERS ?= auto
TEST_WORKERS_MAX ?= 4
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --maxprocesses $(TEST_WORKERS_MAX) --dist loadfile)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/bench_metrics.py --sklearn --out results/bench_metrics.json

lint: $(STAMP)
	$(BIN)/ruff check cl_iad tests benchmarks experiments

clean:
	rm -rf results .pytest_cache
