# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint types unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m enso_tracker demo

lint: $(STAMP)
	$(VENV)/bin/ruff check enso_tracker tests benchmarks
	$(VENV)/bin/ruff format --check enso_tracker tests benchmarks

types: $(STAMP)
	$(VENV)/bin/mypy enso_tracker tests benchmarks

unit: $(STAMP)
	$(PY) -m pytest -q

test: lint types unit

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
