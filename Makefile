# Two commands: `make run` (set up .venv, run the pipeline) and `make test` (set up .venv, run ruff and every test
# but the end-to-end ones). `make test-e2e` runs those (marked e2e: whole pipelines under dvc repro or kfp's local
# runner, two-node torchrun launches); CI runs `make test` then `make test-e2e`, i.e. everything.
# `make test-fast` skips the tests marked slow (training, whole pipelines, servers) for the edit-test loop.
# All three run the tests on TEST_WORKERS pytest-xdist processes, one test module each at a time (tests/parallel.py),
# with one torch thread each unless OMP_NUM_THREADS says otherwise (the workers already fill the cores; a training
# alone, as in `make run`, takes every core: csfnet/threads.py).
PYTHON ?= python3
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest $(PARALLEL)

.PHONY: run test test-e2e test-fast lint format benchmark gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the resolver then only has to fit the rest around it
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/csfnet summary   # every value: .venv/bin/dvc metrics show

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -m "not e2e"

test-e2e: $(STAMP)
	$(PYTEST) -m e2e

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(PYTEST) -m "not slow" -x

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

benchmark: $(STAMP)
	$(BIN)/python benchmarks/run.py

gpu-check: $(STAMP)  # <= 8 min on one NVIDIA GPU: benchmarks/gpu.json + gpu.md
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/gpu.py

clean:
	rm -rf $(VENV) data runs mlruns.db mlartifacts
