# streamscribe: `make demo` for a live transcript, `make test` for the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	# torch, for the tests of the GPU feature path on the CPU (tests/test_features.py): 2.13.0 is the
	# CPU build that lies on this project's machines (CI's too); elsewhere pip takes PyPI's build
	$(BIN)/pip install --quiet "torch==2.13.0"
	touch $@

demo: venv
	$(BIN)/streamscribe demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv lint
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python -m benchmarks.simulate_rtf

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
