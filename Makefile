# Two entry points for a fresh machine with Python 3.11+ and pip:
#   make demo   create .venv if needed, install gradinspect, inspect the bundled samples
#   make test   create .venv if needed, install gradinspect[test], lint, type-check, test
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint samples bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/gradinspect samples/seed_a.h5 samples/seed_a_x.npy
	$(BIN)/gradinspect samples/mnist_mlp.keras samples/mnist_mlp_x.npy
	$(BIN)/gradinspect samples/cnn_small.keras samples/cnn_small_x.npy

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gradinspect tests samples benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m zoo $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

samples: $(VENV)/.installed
	$(BIN)/python samples/make_samples.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
